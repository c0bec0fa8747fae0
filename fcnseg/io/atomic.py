"""Atomic file writes: a temporary file in the same folder, fsync, rename, so a run killed while saving leaves the
previous file intact."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

TMP_SUFFIX = ".tmp"


class WriteError(OSError):
    """A file could not be written (disk full, permissions, ...); the previous file at that path is unchanged."""


def _temp_name_of(path: Path) -> str:
    return f".{path.name}."


def stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Temporary files that ``atomic_write`` left in ``folder`` when its process was killed mid-write."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(TMP_SUFFIX)
                  and p.is_file())


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Calls ``write(tmp)`` on a temporary file beside ``path``, fsyncs it, renames it over ``path`` and fsyncs
    the folder, so ``path`` holds either the old file or the whole new one, never a part, even after a crash.

    Raises:
        WriteError: writing failed (e.g. ENOSPC); names ``path`` and the cause. The temporary file is removed
            and any previous ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_name_of(path), suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
    try:
        try:
            write(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except Exception as e:
            cause = _os_error_in(e)
            if cause is None:
                raise
            err = WriteError(f"{path}: could not write ({cause.strerror or cause}); any previous file there is "
                             "unchanged")
            err.errno = cause.errno
            raise err from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _os_error_in(e: BaseException) -> OSError | None:
    """The OSError behind ``e``: torch.save re-raises a failed write as a RuntimeError from its zip writer's
    cleanup, with the OSError (e.g. ENOSPC) as its context."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _fsync_dir(folder: Path) -> None:
    # The rename is only durable once the folder's entry is on disk; not every system lets a folder be opened.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


