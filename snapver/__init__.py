"""snapver: version an ML data lake with the Git history of its code, by filesystem snapshots."""

__version__ = "0.1.0"
