"""Top-level folders of the source tree that the installed command needs at run time
(systemd/: the units `snapver service install` writes; hooks/: the Git hook shims).

They stay where people look for them in the repository; a wheel carries a copy inside the
package (setup.py's build step puts it in snapver/_shipped/), and a source checkout or an
editable install reads them where they are."""

from __future__ import annotations

from pathlib import Path

from .errors import SnapverError

PACKAGED = Path(__file__).with_name("_shipped")


def shipped(name: str) -> Path:
    """The folder `name` (systemd, hooks) of this installation."""
    for place in (PACKAGED / name, Path(__file__).resolve().parent.parent / name):
        if place.is_dir():
            return place
    raise SnapverError(f"this installation of snapver has no {name}/ folder: reinstall snapver")
