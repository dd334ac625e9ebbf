"""Image files named on a command line: folders, files and glob patterns, in a stable order."""
from __future__ import annotations

import glob
from pathlib import Path

from dynamicdet_cli.core.errors import DynamicDetError, warn

# What a folder contributes: YOLO data's image folders (data/yolo.py) and predict's folders alike.
IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp")


def list_images(inputs: list[str]) -> list[Path]:
    """Files named by `inputs`: folders (their image files by suffix, IMAGE_SUFFIXES,
    sorted; not their subfolders, which a warning counts: an output folder
    inside the input one must not be read back), files, or glob patterns (sorted matches).
    Input order is kept and duplicates are dropped. Hidden files in folders are left out.
    Whether a named file or a pattern's match is an image is decided later, when it is read."""
    found: dict[Path, None] = {}  # ordered set
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            entries = [p for p in path.iterdir() if not p.name.startswith(".")]
            files = sorted(p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            folders = sum(p.is_dir() for p in entries)
            if folders:
                warn(f"{path}: {folders} subfolder(s) not read; name them too (or a pattern such as "
                     f"{path}/*/*.jpg) to read their images")
        elif path.is_file():
            files = [path]
        else:
            files = sorted(Path(p) for p in glob.glob(str(path)) if Path(p).is_file())
            if not files:
                raise DynamicDetError(f"{item}: no such file or folder, and no file matches it as a pattern")
        found.update(dict.fromkeys(files))
    if not found:
        raise DynamicDetError(f"no files in {', '.join(inputs) or 'the (empty) input list'}: "
                              "give image files, folders holding images, or glob patterns")
    return list(found)
