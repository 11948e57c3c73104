"""List the images of a run: a directory walked recursively, or a list file.

Keys are the contract between every stage and the output rows, so they must be
stable: for a directory, a key is the file's path relative to the directory,
with ``/`` separators, and entries are sorted by key; for a list file, a key
is the path as written in the list (normalised with :func:`posixpath.normpath`)
and the list's order is kept.

- A directory is walked with :func:`os.walk` (symbolic links to files are
  listed, symbolic links to directories are not followed, so a link loop
  cannot hang the listing). Files whose extension is not one of
  :data:`IMAGE_EXTENSIONS` (case-insensitive) are skipped and counted per
  extension in :attr:`ImageList.skipped`.
- A list file is ``.csv`` (a header row with a ``path`` column; every other
  column is carried as metadata, aligned with the entries) or any other
  extension (``.txt``, ``.lst``...: one path per line; blank lines and lines
  starting with ``#`` are ignored). Relative paths are relative to the list
  file's directory. Every listed path is kept, whatever its extension and
  whether it exists: the user chose it, so a missing or undecodable file
  becomes a per-image failure when it is loaded, never a silent omission.

Listing never opens an image; decoding problems surface later, per image, as
:class:`~savedeep.errors.ImageError` from :mod:`savedeep.data.preprocess`.
"""

from __future__ import annotations

import csv
import logging
import os
import posixpath
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from savedeep.errors import InputError

log = logging.getLogger(__name__)

#: Extensions listed from a directory (lower case); JPEG, PNG, BMP, TIFF, GIF, WebP.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".dib", ".tif", ".tiff", ".gif", ".webp"}
)

_LIST_PATH_COLUMN = "path"


@dataclass(frozen=True)
class ImageEntry:
    """One image to process: its output key and the file to read."""

    key: str
    path: Path


@dataclass
class ImageList:
    """The images of a run in output order, with CSV metadata and skip counts."""

    source: Path
    entries: list[ImageEntry]
    metadata: dict[str, list[str]] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        """Number of images listed."""
        return len(self.entries)

    @property
    def keys(self) -> list[str]:
        """The keys in output order."""
        return [e.key for e in self.entries]


def list_images(source: Path) -> ImageList:
    """List the images of a directory (recursive, sorted) or of a list file (its order)."""
    source = Path(source)
    if source.is_dir():
        result = _list_directory(source)
    elif source.is_file():
        if source.suffix.lower() in IMAGE_EXTENSIONS:
            raise InputError(
                f"{source}: is an image, not a directory or a list file; "
                "pass the directory that holds it, or a .txt/.csv list naming it"
            )
        result = _list_file(source)
    elif source.exists():
        raise InputError(f"{source}: is neither a directory nor a regular file; pass a directory or a .txt/.csv list")
    else:
        raise InputError(f"{source}: does not exist; pass a directory of images or a .txt/.csv list file")
    if not result.entries:
        detail = ""
        if result.skipped:
            counts = ", ".join(f"{ext} x{n}" for ext, n in sorted(result.skipped.items()))
            detail = f" (skipped by extension: {counts})"
        raise InputError(
            f"{source}: no images found{detail}; supported extensions: {', '.join(sorted(IMAGE_EXTENSIONS))}"
        )
    _check_duplicates(source, result.entries)
    if result.skipped:
        log.info("%s: skipped %d non-image files: %s", source, sum(result.skipped.values()), result.skipped)
    return result


def _list_directory(root: Path) -> ImageList:
    entries: list[ImageEntry] = []
    skipped: Counter[str] = Counter()
    errors: list[str] = []
    # onerror: an unreadable subdirectory must be reported, not silently dropped.
    for dirpath, dirnames, filenames in os.walk(root, onerror=lambda e: errors.append(str(e))):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root)
        for name in filenames:
            ext = os.path.splitext(name)[1].lower()
            if ext not in IMAGE_EXTENSIONS:
                skipped[ext or "(none)"] += 1
                continue
            rel = name if rel_dir == "." else os.path.join(rel_dir, name)
            key = rel.replace(os.sep, "/")
            entries.append(ImageEntry(key=key, path=root / rel))
    if errors:
        raise InputError(f"{root}: cannot list the directory: {errors[0]}; fix its permissions")
    entries.sort(key=lambda e: e.key)
    return ImageList(source=root, entries=entries, skipped=dict(skipped))


def _read_text(path: Path) -> str:
    try:
        # utf-8-sig: spreadsheets often write a byte-order mark before the header.
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: is not UTF-8 text ({e}); save the list as UTF-8") from e
    except OSError as e:
        raise InputError(f"{path}: cannot read the list file ({e.strerror}); check the path and permissions") from e


def _list_file(path: Path) -> ImageList:
    base = path.parent
    text = _read_text(path)
    written: list[str] = []
    metadata: dict[str, list[str]] = {}
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        columns = reader.fieldnames or []
        if _LIST_PATH_COLUMN not in columns:
            raise InputError(
                f"{path}: the CSV has no '{_LIST_PATH_COLUMN}' column (columns: {columns}); "
                f"add a header row whose image column is named '{_LIST_PATH_COLUMN}'"
            )
        extra = [c for c in columns if c != _LIST_PATH_COLUMN]
        metadata = {c: [] for c in extra}
        for lineno, row in enumerate(reader, start=2):
            value = (row.get(_LIST_PATH_COLUMN) or "").strip()
            if not value:
                raise InputError(f"{path}: row {lineno} has an empty '{_LIST_PATH_COLUMN}'; fill it or delete the row")
            written.append(value)
            for c in extra:
                metadata[c].append(row.get(c) or "")
    else:
        for line in text.splitlines():
            value = line.strip()
            if value and not value.startswith("#"):
                written.append(value)
    entries = [
        ImageEntry(key=posixpath.normpath(value), path=(base / value) if not os.path.isabs(value) else Path(value))
        for value in written
    ]
    return ImageList(source=path, entries=entries, metadata=metadata)


def _check_duplicates(source: Path, entries: list[ImageEntry]) -> None:
    counts = Counter(e.key for e in entries)
    dupes = [k for k, n in counts.items() if n > 1]
    if dupes:
        shown = ", ".join(repr(k) for k in dupes[:10])
        more = f" and {len(dupes) - 10} more" if len(dupes) > 10 else ""
        raise InputError(
            f"{source}: duplicate image keys {shown}{more}; each image must appear once (remove the repeated lines)"
        )
