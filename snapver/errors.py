"""The one exception type a user ever sees.

A SnapverError carries a single line that says what was wrong and what to
do; the CLI prints it and exits non-zero, the hooks print it once and let
Git carry on. Anything else escaping is a bug and gets a traceback.
"""


# The CLI's exit codes (README "Exit codes", `snapver --help`); 2 is click's, for a usage error.
OK, ERROR, USAGE, NOT_FOUND, CHANGED, NO_MATCH = 0, 1, 2, 3, 4, 5


class SnapverError(Exception):
    """A user-facing failure: bad input, a missing snapshot, a busy lake."""

    exit_code = 1


class NotFound(SnapverError):
    """A revision, snapshot or volume that does not exist."""

    exit_code = NOT_FOUND  # not click's 2 (a usage error): a script tells a typo from a missing one


class InUse(SnapverError):
    """A snapshot something still needs (a clone's origin, a release's hold): kept, not destroyed."""


class CommandFailed(SnapverError):
    """An external tool (btrfs, zfs, git, mount) refused; its own words included."""


# Decisions are made on these types, never on a message's words (which may be reworded).
FULL = "the filesystem is full; free space (or grow it) and try again"


class FilesystemFull(SnapverError):
    """No space left: a snapshot the catalog cannot record is undone, gc runs unjournaled."""


class FullCommandFailed(CommandFailed, FilesystemFull):
    """An external tool refused because its filesystem is full."""


class CatalogUnwritable(SnapverError):
    """The catalog cannot be written (read-only, or no space); the snapshots are safe."""


class CatalogFull(CatalogUnwritable, FilesystemFull):
    """The catalog cannot be written because its filesystem is full."""


def one_line(text: str) -> str:
    """text with every control or line-breaking character escaped (a name a user typed may
    hold a CR or a U+2028), so that an error is always exactly one line."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)
