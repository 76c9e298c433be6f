"""The one build step pyproject.toml cannot say: the top-level systemd/ (the units `snapver
service install` writes) and hooks/ (the Git hook shims) copied into the package as
snapver/_shipped/, so that a wheel carries them. They stay the source of truth where they
are; snapver/shipped.py finds them in the package, or in a source tree (editable install)."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildPy(build_py):
    def run(self):
        super().run()
        for name in ("systemd", "hooks"):
            target = Path(self.build_lib) / "snapver" / "_shipped" / name
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(HERE / name, target)  # a symlink (hooks/post-commit) as the file it names


setup(cmdclass={"build_py": BuildPy})
