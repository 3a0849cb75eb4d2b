"""Where product images come from: the Fashion-MNIST IDX files, or a folder of image files.

Each source yields candidate rows (product_id, category, title, image bytes, source uri,
official split), or, for a folder, the list of files to read (:func:`list_folder`); validation
and the Delta upsert happen in :mod:`lookalike.catalogue`.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import struct
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lookalike.errors import UsageError
from lookalike.preprocessing import array_to_png

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a uint8 array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4:
        raise ValueError(f"{path}: too short to be an IDX file")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    expected = int(np.prod(shape))
    if body.size != expected:
        raise ValueError(f"{path}: expected {expected} values for shape {shape}, got {body.size}")
    return body.reshape(shape)


def locate_fashion_mnist(directory: str, url: str, cache_dir: Path) -> Path:
    """Folder holding the four IDX files: the Debian package's, else a download into cache_dir."""
    for folder in (Path(directory), cache_dir):
        if all(_find_idx(folder, name) for pair in _FASHION_MNIST_FILES.values() for name in pair):
            return folder
    cache_dir.mkdir(parents=True, exist_ok=True)
    for pair in _FASHION_MNIST_FILES.values():
        for name in pair:
            target = cache_dir / f"{name}.gz"
            if target.exists():
                continue
            # Download to a temporary name so an interrupted download is never mistaken for data;
            # written front to back ("wb"): a Unity Catalog Volume takes no other kind of write.
            part = cache_dir / f"{name}.gz.part{os.getpid()}"
            with urllib.request.urlopen(f"{url.rstrip('/')}/{name}.gz", timeout=60) as response, \
                    open(part, "wb") as handle:
                shutil.copyfileobj(response, handle)
            os.replace(part, target)
    return cache_dir


def _find_idx(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.exists():
            return candidate
    return None


def fashion_mnist_rows(folder: Path, limit_per_split: int | None = None) -> pd.DataFrame:
    """Fashion-MNIST items (all 70,000, or the first ``limit_per_split`` of train and of test)
    as candidate catalogue rows.

    Pixels are inverted to dark-on-white and stored as PNG, so the catalogue looks like product
    photos and a shopper's photo on a white background is comparable with it.
    """
    frames = []
    for official_split, (images_name, labels_name) in _FASHION_MNIST_FILES.items():
        images_path = _find_idx(folder, images_name)
        labels_path = _find_idx(folder, labels_name)
        if images_path is None or labels_path is None:
            raise FileNotFoundError(f"Fashion-MNIST {official_split} files missing in {folder}")
        images = read_idx(images_path)
        labels = read_idx(labels_path)
        if len(images) != len(labels):
            raise ValueError(f"{images_path}: {len(images)} images but {len(labels)} labels")
        if limit_per_split is not None:
            images, labels = images[:limit_per_split], labels[:limit_per_split]
        prefix = "train" if official_split == "train" else "test"
        frames.append(pd.DataFrame({
            "product_id": [f"fmnist-{prefix}-{i:05d}" for i in range(len(images))],
            "category": [FASHION_MNIST_CLASSES[label] for label in labels],
            "title": None,
            "group_id": None,
            "image": [array_to_png(255 - image) for image in images],
            "source_uri": [f"{images_path}#{i}" for i in range(len(images))],
            "official_split": official_split,
        }))
    return pd.concat(frames, ignore_index=True)


def read_metadata_csv(path: str) -> pd.DataFrame:
    """Read a metadata CSV with columns product_id, category, path and optional title and
    group_id (photos of one product share a group_id; each photo is still its own row)."""
    if "://" not in str(path) and not os.path.isfile(path):  # URLs: pandas reads them
        raise UsageError(f"metadata CSV {path} does not exist")
    try:
        metadata = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (ValueError, UnicodeDecodeError) as error:  # pandas' ParserError is a ValueError
        raise UsageError(f"metadata CSV {path} is not a readable CSV ({error})") from None
    required = {"product_id", "category", "path"}
    missing = required - set(metadata.columns)
    if missing:
        raise UsageError(f"metadata CSV {path} is missing columns {sorted(missing)}; expected "
                         "product_id, category, path, and optionally title and group_id")
    for optional in ("title", "group_id"):
        if optional not in metadata.columns:
            metadata[optional] = ""
    duplicated = metadata["product_id"][metadata["product_id"].duplicated()].unique()
    if len(duplicated):
        raise UsageError(f"metadata CSV {path} repeats product_id {list(duplicated[:5])}")
    empty = metadata[(metadata["product_id"] == "") | (metadata["category"] == "")]
    if len(empty):
        raise UsageError(f"metadata CSV {path}: rows {list(empty.index[:5])} have an empty "
                         f"product_id or category")
    return metadata[["product_id", "category", "title", "group_id", "path"]]


# Spark's file sources skip these names (hidden files, _SUCCESS markers): so does the listing.
_SKIPPED_PREFIXES = (".", "_")


@dataclass(frozen=True)
class FolderListing:
    """The files of an image folder, as :func:`list_folder` found them."""
    root: Path
    files: tuple[Path, ...]                   # regular files, sorted
    rejects: tuple[tuple[str, str, str], ...]  # (path, reason, detail) of what is not read


def list_folder(root: Path) -> FolderListing:
    """Every regular file under ``root``, never through a symbolic link.

    A link is not followed, whether to a file or a folder, inside ``root`` or outside: a link
    back to a parent would list every image again (one loop per link, exponential with two),
    and a link outward would read files the shop did not put in the folder. Each link is
    reported as a reject instead.
    """
    files, rejects = [], []
    for directory, folders, names in os.walk(root, followlinks=False):
        folders[:] = sorted(f for f in folders if not f.startswith(_SKIPPED_PREFIXES))
        for name in sorted(names + [f for f in folders if os.path.islink(Path(directory, f))]):
            path = Path(directory, name)
            if name.startswith(_SKIPPED_PREFIXES):
                continue
            if path.is_symlink():
                rejects.append((str(path), "symlink", "links are not followed "
                                f"(points to {os.readlink(path)})"[:500]))
            elif path.is_file():
                files.append(path)
        folders[:] = [f for f in folders if not os.path.islink(Path(directory, f))]
    return FolderListing(root, tuple(files), tuple(rejects))


def product_key(relative: str) -> str:
    """A file's product_id when no metadata names it: its path without the extension."""
    return re.sub(r"\.[^./]+$", "", relative)


def ambiguous_files(relative_paths) -> dict[str, str]:
    """Files that would name the same product (``x.jpg`` and ``x.png``): relative path ->
    the detail of their reject. Neither is taken: which one the shop meant is not knowable."""
    by_key: dict[str, list[str]] = {}
    for relative in relative_paths:
        by_key.setdefault(product_key(relative), []).append(relative)
    return {relative: f"{', '.join(sorted(group))} all name product {key!r}: keep one"
            for key, group in by_key.items() if len(group) > 1 for relative in group}
