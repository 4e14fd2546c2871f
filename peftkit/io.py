"""Crash-safe writes and contained names.

A folder is written beside its destination and swapped in only when complete; a write that fails
(a full disk, say) removes its own temporary files and leaves what was there before untouched.
`contained` keeps names that come from configs, files or the Hub inside the folder they belong to.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from peftkit.config import ConfigError


@contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces `final`, on error it is removed.

    The previous `final` stays in place until the new one is complete, so a crash
    or a full disk mid-write never leaves a half-written folder under that name.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def committed_dir(final: str | Path, marker: str = "COMMITTED") -> Iterator[Path]:
    """Yield `.tmp-NAME` beside `final`; when the block ends, write `marker` last and rename to `final`.

    For folders that crash recovery scans (checkpoints): readers trust a folder only when it has
    `marker`. A crash, or an exception in the block, leaves the `.tmp-` folder as it was (readers
    skip it; the next write of the same name replaces it), never a half-written `final`.
    """
    final = Path(final)
    tmp = final.parent / f".tmp-{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except Exception:  # a failed write (no space left...) cleans up; a hard crash leaves `.tmp-` unmarked
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for file in tmp.iterdir():
        _fsync(file)
    (tmp / marker).write_text("")
    _fsync(tmp / marker)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    _fsync(final.parent)


def _fsync(path: Path) -> None:
    """Flush a file or folder to disk, so that a power loss cannot reorder the marker before the data."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, data: dict) -> None:
    """Write JSON through a temporary file and an atomic rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class UnsafePathError(ConfigError):
    """A name that would leave the folder it must stay in (`..`, an absolute path, a separator)."""


def contained(root: str | Path, name: str, what: str = "name") -> Path:
    """`root / name`, refused unless it stays inside `root` (no `..`, absolute path or escaping link).

    For names that come from a recipe, a file or the Hub (adapter, run and file names).
    """
    text = str(name)
    if not text or "\x00" in text or Path(text).is_absolute() or PurePosixPath(text).is_absolute():
        raise UnsafePathError(f"{what} {text!r} must be a relative name inside {str(root)!r}")
    parts = PurePosixPath(text.replace("\\", "/")).parts
    if ".." in parts:
        raise UnsafePathError(f"{what} {text!r} leaves {str(root)!r} ('..'); use a plain name")
    root = Path(root)
    target = root / text
    if not target.resolve().is_relative_to(root.resolve()):
        raise UnsafePathError(f"{what} {text!r} resolves outside {str(root)!r}; use a plain name")
    return target


def safe_name(name: str, what: str = "name") -> str:
    """`name` if it is one plain path component (an adapter or run name), else UnsafePathError."""
    text = str(name)
    if not text or text in (".", "..") or any(c in text for c in "/\\\x00"):
        raise UnsafePathError(f"{what} {text!r} must be a plain name without '/', '\\\\' or '..'")
    return text
