"""Output folders: checked before any work, locked while one process writes into them, and cleared of
the temporary files a killed writer left behind.

The lock is an exclusive `fcntl.flock` on the file LOCK_NAME inside the folder. The operating system
releases it when its holder exits, however it ends (SIGKILL included), so a killed run never leaves its
folder locked, and a second process that asks for a held lock is refused at once instead of waiting.
The lock file itself stays: deleting it while another process may be opening it would let two processes
hold two different locks on one folder.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from convattn.utils.records import TEMPORARY_NAME

__all__ = [
    "LOCK_NAME",
    "FolderInUseError",
    "check_creatable",
    "folder_lock",
    "holds_files",
    "remove_stale_temporaries",
]

LOCK_NAME = ".lock"


class FolderInUseError(FileExistsError):
    """Another live process holds the folder's lock: the request is refused and nothing changed."""


def check_creatable(folder: Path) -> None:
    """Raise unless `folder` is, or can be created as, a folder this process can write into.

    Raises:
        NotADirectoryError: `folder`, or the nearest path above it that exists, is a file.
        PermissionError: that nearest existing folder cannot be written.
    """
    folder = Path(folder)
    base = next(p for p in (folder, *folder.absolute().parents) if p.exists())
    if not base.is_dir():
        what = "is a file, not a folder" if base == folder else f"cannot be created: {base} is a file"
        raise NotADirectoryError(f"{folder} {what}")
    if not os.access(base, os.W_OK | os.X_OK):
        where = "" if base == folder else f" inside {base}"
        raise PermissionError(f"cannot write into {folder}{where}: permission denied (a read-only folder?)")


def holds_files(folder: Path) -> bool:
    """Whether `folder` holds anything besides its lock file (False for a missing folder)."""
    folder = Path(folder)
    return folder.is_dir() and any(p.name != LOCK_NAME for p in folder.iterdir())


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold the exclusive lock of `folder` (an existing folder) within the block.

    Raises:
        FolderInUseError: another process holds it; the message names the folder.
        PermissionError: the lock file cannot be created (a read-only folder).
    """
    folder = Path(folder)
    try:
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except PermissionError:
        raise PermissionError(f"cannot lock {folder}: permission denied (a read-only folder?)") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderInUseError(
                f"{folder} is in use: another process is writing into it (wait for it to end, or choose "
                "another folder); nothing changed"
            ) from None
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def remove_stale_temporaries(folder: Path, *, locked: bool = False) -> list[Path]:
    """Remove the temporary files of `atomic_write_bytes` (".NAME.tmp-PID") a killed writer left in
    `folder`: those whose process no longer runs, or every one when the caller holds the folder's lock
    (then no other process writes there). Other files are never touched. Returns the removed paths."""
    removed = []
    for path in sorted(Path(folder).iterdir()):
        match = TEMPORARY_NAME.fullmatch(path.name)
        if match is None or not path.is_file():
            continue
        pid = int(match["pid"])
        if (locked and pid != os.getpid()) or not _alive(pid):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
