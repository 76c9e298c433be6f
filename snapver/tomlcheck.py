"""Settings files checked against what snapver reads, with errors that name the line.

snapver.toml (config.py) and snapverd.toml (daemon.py) are parsed here with tomllib,
and each gives a builder that checks every table and key it knows; anything else,
an unknown table, an unknown key or a value of the wrong type, is one line naming
the file, the line and the key, and what is allowed:

    /repo/snapver.toml line 7: unknown table [retension]; known: lake, project, ...

tomllib keeps no positions, so the line is found afterwards by a small scan of the
text for the table header or key (a message aid only: what is valid is tomllib's
say). Plain functions and classes, no dataclasses: the Git hooks import this.
"""

from __future__ import annotations

import re
import tomllib

from .errors import SnapverError


class ConfigError(SnapverError):
    """A settings file that is not what snapver reads: one line naming the file and the line."""


class Invalid(Exception):
    """Raised by a builder's checks: the message, and the key path it is about (for its line)."""

    def __init__(self, message: str, at: tuple = ()):
        super().__init__(message)
        self.at = at


def parse(path, data: bytes | str, build):
    """build(doc) for the TOML in data, every mistake as a ConfigError naming path and line."""
    try:
        text = data.decode() if isinstance(data, bytes) else data
        doc = tomllib.loads(text)
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not valid TOML (not UTF-8 text): fix it by hand") from None
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\s*\(at line (\d+), column (\d+)\)", str(e))
        if m is None:
            raise ConfigError(f"{path}: not valid TOML: {e}: fix it by hand") from None
        what = str(e)[:m.start()] + str(e)[m.end():]
        raise ConfigError(f"{path} line {m.group(1)}, column {m.group(2)}: not valid TOML: {what}: "
                          "fix it by hand") from None
    try:
        return build(doc)
    except Invalid as e:
        line = locate(text, e.at)
        raise ConfigError(f"{path}{f' line {line}' if line else ''}: {e}") from None
    except SnapverError as e:  # a check outside this module (a name, a duration) with no key path
        raise ConfigError(f"{path}: {e}") from None


# ------------------------------------------------------------------ checks for builders

def short(value) -> str:
    """A value as the user wrote it, cut short: an error is one line, and a hostile
    5,000-character string is not echoed whole."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def known(table: dict, keys, at: tuple = (), label: str = "") -> None:
    """Every key of table is one of keys; else an error at the first unknown one."""
    unknown = [k for k in table if k not in keys]
    if unknown:
        raise Invalid(f"{label}unknown setting(s) {', '.join(sorted(unknown))}: "
                      f"the settings are {', '.join(keys)}", at + (unknown[0],))


def tables(doc: dict, names) -> None:
    """Every top-level key of doc is one of the tables names, and each is a table."""
    for key, value in doc.items():
        if key not in names:
            what = f"table [{key}]" if isinstance(value, dict) else f"setting {key} outside any table"
            raise Invalid(f"unknown {what}; known: {', '.join(sorted(names))}", (key,))
        if not isinstance(value, dict):
            raise Invalid(f"{key} = {short(value)} is outside any table: settings go under their "
                          f"[table] header, and [{key}] must be a table", (key,))


_KINDS = {
    "str": (lambda v: isinstance(v, str), 'a string in quotes, e.g. "abc"'),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "strs": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
             'a list of strings, e.g. ["models"]'),
}


def get(table: dict, key: str, kind: str, at: tuple, default=None):
    """table[key] if it is of kind (see _KINDS), default if it is absent; else an error."""
    if key not in table:
        return default
    value = table[key]
    ok, wanted = _KINDS[kind]
    if not ok(value):
        raise Invalid(f"{label_of(at)}{key} = {short(value)} must be {wanted}", at + (key,))
    return value


def label_of(at: tuple) -> str:
    """How a message names the table at key path at: "[scan] ", "[volumes.models] ", ""."""
    return f"[{'.'.join(str(p) for p in at)}] " if at else ""


# ------------------------------------------------------------------ where in the text

_HEADER = re.compile(r"\s*(\[\[?)\s*([^\[\]#]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"""\s*("(?:[^"\\]|\\.)*"|'[^']*'|[A-Za-z0-9_-]+)\s*[=.]""")
_PART = re.compile(r"""\s*("(?:[^"\\]|\\.)*"|'[^']*'|[^.\s]+)\s*(?:\.|$)""")


def _unquote(part: str) -> str:
    return part[1:-1] if part[:1] in "\"'" and len(part) > 1 else part


def locate(text: str, at: tuple) -> int | None:
    """The line where the key path at (e.g. ("scan", "volumes"), ("workspace", 0, "path"))
    is written, or its nearest enclosing table's; None when nothing matches."""
    where: dict[tuple, int] = {}
    table: tuple = ()
    counts: dict[tuple, int] = {}
    for n, line in enumerate(text.splitlines(), 1):
        header = _HEADER.match(line)
        if header:
            parts = tuple(_unquote(p) for p in _PART.findall(header.group(2)))
            if header.group(1) == "[[":
                counts[parts] = counts.get(parts, -1) + 1
                where.setdefault(parts, n)  # the array as a whole is where it starts
                table = parts + (counts[parts],)
            else:
                table = parts
            where.setdefault(table, n)
            continue
        key = _KEY.match(line)
        if key:
            where.setdefault(table + (_unquote(key.group(1)),), n)
    for i in range(len(at), 0, -1):
        if at[:i] in where:
            return where[at[:i]]
    return None
