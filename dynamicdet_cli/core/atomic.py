"""Atomic file writes: whatever a command writes appears whole or not at all.

Every file dynamicdet writes (checkpoints, run state, metrics, detections, sweeps, renders)
goes through `atomic_path`: the content is written to a temporary file in the target's
folder, flushed to disk, then renamed onto the target, so a crash or Ctrl-C half-way never
leaves a truncated file and never damages what was already there.

A write that depends on what was read (calibrate adding an operating point to a checkpoint)
holds `locked(path)` from the read to the write, so that two such commands on one file run
one after the other and neither update is lost; a run folder is held the same way while
training writes it.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; writes stay atomic, concurrent updates are not ordered
    fcntl = None


@contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path`, on error it is removed.
    `suffix` ends the temporary name, for writers that check it (torch.export.save wants .pt2)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the hidden name adds 14 characters: cut the target's so that a name the file system
    # allows for the target is allowed for its temporary file too
    with _named(path, None):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:MAX_PREFIX]}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        with _named(path, tmp):
            yield Path(tmp)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; these are ordinary files
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


MAX_PREFIX = 200  # of a name; file systems allow 255 bytes


@contextmanager
def _named(path: Path, tmp: str | None) -> Iterator[None]:
    """File-system errors about our temporary file name the user's path instead: the user
    knows `path`, not `.path.x1y2z3.tmp`."""
    try:
        yield
    except OSError as err:
        if err.filename is not None and (tmp is None or os.fsdecode(err.filename) == tmp) and err.filename2 is None:
            err.filename = str(path)
        raise


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, data, indent: int | None = None) -> Path:
    """JSON as the standard defines it: a NaN or infinity is refused (ValueError), never written."""
    return write_text(path, json.dumps(data, indent=indent, allow_nan=False) + "\n")


@contextmanager
def locked(path: str | Path, wait: bool = True, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive advisory lock (flock) on the file or folder at `path`.

    With `wait`, block until the holder lets go (calling `on_wait` first, so the user knows
    why nothing happens); without, raise BlockingIOError at once. The lock is on the file
    itself, never a lock file: nothing is left behind, and the kernel releases it when its
    process dies, even by kill -9. An atomic write replaces the file by a new one, so a lock
    won on the file just replaced is dropped and taken again on the new one.
    """
    if fcntl is None:
        yield
        return
    while True:
        fd = os.open(path, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    raise
                if on_wait is not None:
                    on_wait()
                    on_wait = None
                fcntl.flock(fd, fcntl.LOCK_EX)
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # replaced while we waited: lock the new file
    try:
        yield
    finally:
        os.close(fd)
