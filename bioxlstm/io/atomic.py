"""Outputs that appear whole or not at all: a file or directory is written beside its destination
and takes its place only when the writing succeeded."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

UMASK = os.umask(0)
os.umask(UMASK)


def require_writable_file(path: str | Path) -> None:
    """An OSError naming `path` unless a file can be written there: a command checks its output
    before the work, and the error names the user's path, where mkstemp's would name our temporary file."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory; name a file to write the output to")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path}: cannot be written: the directory {path.parent} does not exist")


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; it replaces `path` only when the block ends
    without an error, so an existing file is never left half-written or emptied by a bad record or
    Ctrl-C halfway (the temporary file is removed then)."""
    path = Path(path)
    require_writable_file(path)
    descriptor, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(descriptor)
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~UMASK)  # mkstemp makes it private; an output is an ordinary file
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def require_new_directory(path: Path) -> None:
    """FileExistsError unless `path` is absent or an empty directory: an output never replaces one."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(f"{path}: exists and is not empty; choose a new directory")


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """A temporary directory beside `path` to fill; it becomes `path` (absent or empty, else
    FileExistsError) only when the block ends without an error, so a failure or Ctrl-C halfway
    leaves no partial directory behind."""
    path = Path(path)
    require_new_directory(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield staging
        os.chmod(staging, 0o777 & ~UMASK)  # mkdtemp makes it private; an output is an ordinary directory
        if path.exists():
            path.rmdir()
        staging.rename(path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
