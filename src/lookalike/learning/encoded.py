"""A split's images as their encoded bytes on local disk, decoded only where they are used.

Training, tuning and evaluation read a split through :class:`EncodedImages`: one file of the
images' bytes back to back (``images.bin``, memory-mapped) and where each starts and how long
it is. Indexing decodes with the one preprocessing function
(:func:`lookalike.preprocessing.to_model_input`), so memory follows the batch, not the
catalogue: a 224 px RGB photo is 602 KB as float32 but about 40 KB as a JPEG, and only a batch
of them is ever decoded at once.

``x[i]`` is one decoded image, ``x[rows]`` / ``x[a:b]`` a decoded batch; ``x.take(rows)`` is a
lazy subset (nothing decoded); ``np.asarray(x)`` is refused, because it would decode everything.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Iterable

import numpy as np

from lookalike.preprocessing import batch_to_model_input, to_model_input

# Images decoded per step when a whole split is embedded: bounded memory, big enough batches.
CHUNK_ROWS = 1024


class EncodedImages:
    """Memory-mapped encoded images of one split, decoded at ``size`` x ``size`` x ``channels``."""

    def __init__(self, directory: str | Path, size: int, channels: int,
                 rows: np.ndarray | None = None):
        self.directory = Path(directory)
        self.size, self.channels = int(size), int(channels)
        self._starts = np.load(self.directory / "starts.npy", mmap_mode="r")
        self._lengths = np.load(self.directory / "lengths.npy", mmap_mode="r")
        self._rows = np.arange(len(self._starts)) if rows is None else np.asarray(rows)
        blob = self.directory / "images.bin"
        self._blob = (np.memmap(blob, dtype=np.uint8, mode="r") if blob.stat().st_size
                      else np.zeros(0, dtype=np.uint8))

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self), self.size, self.size, self.channels)

    @property
    def nbytes_encoded(self) -> int:
        return int(np.sum(self._lengths[self._rows])) if len(self) else 0

    def encoded(self, i: int) -> bytes:
        """The stored bytes of row ``i`` (of this view)."""
        row = int(self._rows[i])
        start = int(self._starts[row])
        return self._blob[start:start + int(self._lengths[row])].tobytes()

    def take(self, rows) -> "EncodedImages":
        """A lazy subset: rows (indices or a boolean mask) of this view, nothing decoded."""
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        return self._view(rows=self._rows[rows])

    def at_size(self, size: int) -> "EncodedImages":
        """The same images, decoded at another size (e.g. the raw-pixel baseline's)."""
        return self._view(size=int(size))

    def _view(self, **changes) -> "EncodedImages":
        """This view with other rows or size, sharing the opened files."""
        view = copy.copy(self)
        for name, value in changes.items():
            setattr(view, "_rows" if name == "rows" else name, value)
        return view

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return to_model_input(self.encoded(int(key)), self.size, self.channels)
        indices = np.arange(len(self))[key] if isinstance(key, slice) else np.asarray(key)
        if indices.dtype == bool:
            indices = np.flatnonzero(indices)
        return batch_to_model_input((self.encoded(int(i)) for i in indices.ravel()),
                                    self.size, self.channels)

    def __array__(self, *args, **kwargs):
        raise TypeError("EncodedImages are decoded by batch: index a range (x[a:b]) or use "
                        "lookalike.learning.encoded.map_chunks, never the whole split at once")


def write_encoded(directory: Path, rows: Iterable, order_key) -> dict[str, np.ndarray]:
    """Stream ``rows`` (with ``.image`` bytes) into ``directory``; return their other columns.

    Bytes are appended to ``images.bin`` in arrival order, so only one row is in memory at a
    time; ``starts`` / ``lengths`` are then stored in ``order_key`` order (e.g. product_id), so
    the split's order does not depend on how Spark delivered it.
    """
    directory.mkdir(parents=True, exist_ok=True)
    starts, lengths, columns = [], [], {}
    position = 0
    with open(directory / "images.bin", "wb") as blob:
        for row in rows:
            data = bytes(row.image)
            blob.write(data)
            starts.append(position)
            lengths.append(len(data))
            position += len(data)
            for name, value in row.asDict().items():
                if name != "image":
                    columns.setdefault(name, []).append(value)
    # Missing values (no group_id) are stored as "" so the arrays stay plain strings.
    arrays = {name: np.asarray(["" if v is None else v for v in values]).astype(str)
              for name, values in columns.items()}
    order = np.argsort(arrays[order_key], kind="stable") if starts else np.zeros(0, dtype=int)
    np.save(directory / "starts.npy", np.asarray(starts, dtype=np.int64)[order])
    np.save(directory / "lengths.npy", np.asarray(lengths, dtype=np.int64)[order])
    return {name: values[order] for name, values in arrays.items()}


def map_chunks(fn, x, size: int = CHUNK_ROWS) -> np.ndarray:
    """``fn`` over ``x`` (decoded images or an array) a chunk at a time, results stacked."""
    parts = [np.asarray(fn(np.asarray(x[start:start + size])))
             for start in range(0, len(x), size)]
    if parts:
        return np.concatenate(parts)
    return np.asarray(fn(np.zeros((0, *x.shape[1:]), dtype=np.float32)))


def take(x, rows):
    """Rows of decoded-on-demand images (lazily) or of an in-memory array."""
    return x.take(rows) if isinstance(x, EncodedImages) else x[rows]
