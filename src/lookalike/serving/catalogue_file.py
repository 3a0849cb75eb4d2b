"""The product metadata packaged with a model: ids, categories, titles, groups and thumbnails.

Two files in one folder (the pyfunc artifact ``products``): ``products.parquet`` (product_id,
category, title, group_id, thumbnail offset and length) and ``thumbnails.bin`` (the PNG bytes,
back to
back). A serving worker loads the small metadata and memory-maps the thumbnails, so
``include_images`` reads only the thumbnails it returns and workers share them through the page
cache instead of each holding the whole catalogue's images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

METADATA_FILE = "products.parquet"
THUMBNAILS_FILE = "thumbnails.bin"


def write_catalogue(rows: Iterable[tuple[str, str, str | None, str | None, bytes | None]],
                    directory: str | Path) -> int:
    """Write ``(product_id, category, title, group_id, thumbnail PNG or None)`` rows; returns
    the count.

    Rows are streamed: thumbnails go to disk as they come, so the writer holds only metadata.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ids, categories, titles, groups, offsets, lengths = [], [], [], [], [], []
    with open(directory / THUMBNAILS_FILE, "wb") as out:
        for product_id, category, title, group_id, thumbnail in rows:
            ids.append(str(product_id))
            categories.append(str(category))
            titles.append(title if isinstance(title, str) and title else None)
            groups.append(group_id if isinstance(group_id, str) and group_id else None)
            offsets.append(out.tell())
            lengths.append(-1 if thumbnail is None else len(thumbnail))
            if thumbnail is not None:
                out.write(thumbnail)
    pd.DataFrame({"product_id": ids, "category": categories, "title": titles, "group_id": groups,
                  "thumb_offset": np.asarray(offsets, dtype=np.int64),
                  "thumb_length": np.asarray(lengths, dtype=np.int64)}
                 ).to_parquet(directory / METADATA_FILE, index=False)
    return len(ids)


class ServingCatalogue:
    """Read side: metadata in memory, thumbnails memory-mapped and read on demand."""

    def __init__(self, directory: str | Path):
        directory = Path(directory)
        frame = pd.read_parquet(directory / METADATA_FILE)
        self.ids: list[str] = frame["product_id"].astype(str).tolist()
        self._row = {product_id: i for i, product_id in enumerate(self.ids)}
        self._category = frame["category"].astype(str).tolist()
        self._title = [t if isinstance(t, str) else None for t in frame["title"]]
        # Photos of one product share a group_id (a catalogue packaged before groups has none).
        raw_groups = frame["group_id"] if "group_id" in frame else [None] * len(frame)
        self._group = [g if isinstance(g, str) and g else None for g in raw_groups]
        self._members: dict[str, list[str]] = {}
        for product_id, group in zip(self.ids, self._group):
            if group is not None:
                self._members.setdefault(group, []).append(product_id)
        self.largest_group = max((len(m) for m in self._members.values()), default=1)
        self._offset = frame["thumb_offset"].to_numpy(np.int64)
        self._length = frame["thumb_length"].to_numpy(np.int64)
        blob = directory / THUMBNAILS_FILE
        self._blob = (np.memmap(blob, dtype=np.uint8, mode="r") if blob.stat().st_size
                      else np.zeros(0, dtype=np.uint8))

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, product_id: object) -> bool:
        return product_id in self._row

    def category(self, product_id: str) -> str | None:
        row = self._row.get(product_id)
        return None if row is None else self._category[row]

    def title(self, product_id: str) -> str | None:
        row = self._row.get(product_id)
        return None if row is None else self._title[row]

    def group(self, product_id: str) -> str | None:
        row = self._row.get(product_id)
        return None if row is None else self._group[row]

    def product_key(self, product_id: str) -> str:
        """What "one product" means: its group when it has one, else the photo's own id."""
        return self.group(product_id) or product_id

    def same_product(self, product_id: str) -> set[str]:
        """Every photo id of ``product_id``'s product, itself included."""
        group = self.group(product_id)
        return set(self._members[group]) if group is not None else {product_id}

    def thumbnail(self, product_id: str) -> bytes | None:
        row = self._row.get(product_id)
        if row is None or self._length[row] < 0:
            return None
        start = int(self._offset[row])
        return self._blob[start:start + int(self._length[row])].tobytes()
