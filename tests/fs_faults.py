"""Folders that fail the way a user's disk does: read-only, or full after a few KB.

Root ignores file permissions, so as root these are small tmpfs mounts (the test is skipped where
mounting is not allowed); as another user a read-only folder is a chmod."""
from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest


def _mount(path: Path, options: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()})")


@contextlib.contextmanager
def full_disk(path: Path, kib: int = 16):
    """`path` is a folder with `kib` KiB of space."""
    if os.geteuid() != 0:
        pytest.skip("a full disk is simulated with a small tmpfs, which needs root")
    _mount(path, f"size={kib}k")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@contextlib.contextmanager
def read_only(path: Path):
    """`path` is a folder nothing can be written into."""
    if os.geteuid() != 0:
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
        return
    _mount(path, "ro,size=16k")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> None:
    """Use up the space left in `path` (a full_disk folder)."""
    with open(path / "filler", "wb", buffering=0) as f:        # unbuffered: close() has nothing left to fail on
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 4096)
