"""snapver: version an ML data lake with the Git history of its code, by filesystem snapshots."""

__version__ = "0.1.0"

__all__ = ["snapshot", "path", "log_metrics"]


def __getattr__(name: str):
    # The Python API (snapver.snapshot, snapver.path, snapver.log_metrics) is imported on first use: the Git
    # hooks import this package too, and must not pay for the core at import time.
    if name in ("snapshot", "path", "log_metrics"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'snapver' has no attribute {name!r}")
