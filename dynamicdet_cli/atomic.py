"""Atomic file writes: whatever a command writes appears whole or not at all.

Every file dynamicdet writes (checkpoints, run state, metrics, detections, sweeps, renders)
goes through `atomic_path`: the content is written to a temporary file in the target's
folder, flushed to disk, then renamed onto the target, so a crash or Ctrl-C half-way never
leaves a truncated file and never damages what was already there.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
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


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, data, indent: int | None = None) -> Path:
    """JSON as the standard defines it: a NaN or infinity is refused (ValueError), never written."""
    return write_text(path, json.dumps(data, indent=indent, allow_nan=False) + "\n")
