"""Provisioning: where a working tree's lake is (an image file, a directory, the main
worktree's), and mounting an image-backed lake again after a reboot.

Split out of lake.py (Workspace.open and Workspace.init call it); what each backend does to
provision or mount is the backend's own (backends/).
"""

from __future__ import annotations

import math
from pathlib import Path

from . import linux
from .backends import backend_class
from .config import Config, LocalState
from .errors import SnapverError
from .gitrepo import GitRepo


def provision_lake(git: GitRepo, config: Config, lake: str | None, image: Path | None, size: int | None):
    """Where this working tree's lake is: (backend spec, image file or None)."""
    kind = backend_class(config.backend)
    if image is not None:
        image = Path(image).absolute()
        return kind.provision_image(image, size), image
    if lake:
        return kind.lake_spec(lake), None
    if git.common_dir != git.git_dir and LocalState.exists(git.common_dir):
        main = LocalState.load(git.common_dir)  # a worktree shares its main worktree's lake
        return main.lake, (Path(main.image) if main.image else None)
    if config.image and Path(config.image).exists():
        return provision_lake(git, config, None, Path(config.image), None)
    if config.lake:
        return config.lake, None
    default = kind.default_lake(git.toplevel)
    if default is not None:
        return default, None
    raise SnapverError(
        f"{git.toplevel} is on {linux.mount_of(git.toplevel).fstype}, which has no snapshots: pass --image FILE "
        "--size SIZE to make a Btrfs image (as root), or --lake DIR on a Btrfs filesystem"
    )


def ensure_mounted(state: LocalState) -> None:
    """An image-backed lake is mounted (or its pool imported) again after a reboot,
    by the first snapver run as root."""
    if state.image:
        backend_class(state.backend).ensure_mounted(state.lake, Path(state.image))


def parse_size(text: str) -> int:
    """'20G', '512M', '1T', '1048576' -> bytes."""
    units = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    num, unit = (t[:-1], t[-1]) if t and t[-1] in units else (t, "")
    try:
        value = float(num) * units[unit]
    except ValueError:
        raise SnapverError(f"{text!r} is not a size: use e.g. 512M, 20G or 1T") from None
    if not math.isfinite(value):  # float() reads "nan" and "inf", which int() then refuses with a traceback
        raise SnapverError(f"{text!r} is not a size: use e.g. 512M, 20G or 1T")
    if value <= 0:
        raise SnapverError(f"{text!r} is not a size: it must be positive")
    return int(value)

