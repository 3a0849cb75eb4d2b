"""Exact retrieval metrics (pure numpy) and diagnostic plots.

Metrics follow the metric-learning literature:

* recall@k -- fraction of queries with at least one same-label catalogue item
  among their k nearest neighbours (a.k.a. "precision-at-one style" recall,
  as in tensorflow-similarity / pytorch-metric-learning), not the IR
  "fraction of relevant items retrieved".
* MAP@R -- Musgrave et al., "A Metric Learning Reality Check" (2020). For a
  query with R same-label catalogue items (the query itself excluded),
  AP@R = (1/R) * sum_{i<=R} P(i) * rel(i), where P(i) is precision in the top i.

Plots use matplotlib's Agg canvas directly on a ``Figure`` (no pyplot state),
so they work headless and from worker threads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = [
    "RetrievalReport",
    "retrieval_metrics",
    "plot_neighbour_grid",
    "plot_projection",
]


# --------------------------------------------------------------------------- metrics


@dataclass
class RetrievalReport:
    """Result of :func:`retrieval_metrics`.

    ``n_queries`` counts evaluated queries; ``n_skipped`` counts queries whose
    label has no catalogue item (R = 0): they cannot be answered correctly and,
    as in pytorch-metric-learning, are left out of every average.
    """

    recall_at_k: dict[int, float]
    map_at_r: float
    per_class: pd.DataFrame
    n_queries: int
    n_skipped: int
    distance: str
    k_values: tuple[int, ...] = field(default=())

    def as_flat_dict(self, prefix: str = "") -> dict[str, float]:
        """Flat metric dict for MLflow, e.g. {"recall_at_1": .., "map_at_r": ..}."""
        out = {f"{prefix}recall_at_{k}": float(v) for k, v in sorted(self.recall_at_k.items())}
        out[f"{prefix}map_at_r"] = float(self.map_at_r)
        return out


def _prepare(x: np.ndarray, distance: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D (n, dim) array, got shape {x.shape}")
    if distance == "cosine":
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.maximum(norms, np.finfo(np.float32).tiny)
    return np.ascontiguousarray(x)


def _scores(q: np.ndarray, c: np.ndarray, c_sq: np.ndarray | None) -> np.ndarray:
    """Ranking scores (lower = nearer) for a block of queries, one matrix allocation.

    Only the order matters, so cosine uses -similarity and l2 drops the
    per-query constant ||q||^2 from ||q - c||^2.
    """
    s = q @ c.T
    if c_sq is None:
        np.negative(s, out=s)
    else:
        s *= -2.0
        s += c_sq[None, :]
    return s


def retrieval_metrics(
    query_vectors: np.ndarray,
    query_labels: Sequence | np.ndarray,
    catalogue_vectors: np.ndarray,
    catalogue_labels: Sequence | np.ndarray,
    k_values: Sequence[int] = (1, 5, 10),
    distance: str = "cosine",
    exclude_self: bool = False,
    self_indices: np.ndarray | None = None,
    batch_size: int = 1024,
    rank_block_elements: int = 4_000_000,
) -> RetrievalReport:
    """Exact recall@k and MAP@R of queries against a catalogue (see module doc).

    Leave-one-out: ``exclude_self=True`` means query i *is* catalogue item i
    (queries and catalogue are the same set) and is never its own neighbour.
    ``self_indices`` generalises this for queries that are a subset of the
    catalogue: entry i is the catalogue row of query i, or -1 if none.

    Search is exact and chunked by ``batch_size`` queries, so peak memory is
    about ``batch_size * n_catalogue * 4`` bytes (245 MB for 1024 x 60k) plus
    the top-``max(R, k)`` block per query; the full query x catalogue matrix is
    never built. ``rank_block_elements`` caps the rows x catalogue block that
    is ranked at once (its int64 argpartition output is 8 bytes per element).
    Ties in distance are broken by catalogue order.
    """
    if distance not in ("cosine", "l2"):
        raise ValueError(f"unknown distance {distance!r}; choose 'cosine' or 'l2'")
    k_values = tuple(sorted({int(k) for k in k_values}))
    if not k_values or k_values[0] < 1:
        raise ValueError(f"k_values must be positive integers, got {k_values}")
    if batch_size < 1 or rank_block_elements < 1:
        raise ValueError("batch_size and rank_block_elements must be >= 1")
    q = _prepare(query_vectors, distance)
    c = _prepare(catalogue_vectors, distance)
    q_labels_raw = np.asarray(query_labels)
    c_labels_raw = np.asarray(catalogue_labels)
    n_q, n_c = len(q), len(c)
    if q.shape[1] != c.shape[1]:
        raise ValueError(f"query dim {q.shape[1]} != catalogue dim {c.shape[1]}")
    if len(q_labels_raw) != n_q or len(c_labels_raw) != n_c:
        raise ValueError("labels must have one entry per vector")

    if exclude_self and self_indices is not None:
        raise ValueError("pass either exclude_self or self_indices, not both")
    if exclude_self:
        if n_q != n_c:
            raise ValueError("exclude_self requires queries and catalogue of equal length")
        self_idx = np.arange(n_q)
    elif self_indices is not None:
        self_idx = np.asarray(self_indices, dtype=np.int64)
        if self_idx.shape != (n_q,) or self_idx.max(initial=-1) >= n_c:
            raise ValueError("self_indices must have one catalogue row (or -1) per query")
    else:
        self_idx = np.full(n_q, -1, dtype=np.int64)

    # Integer codes make label comparison cheap and work for str or int labels.
    classes, codes = np.unique(np.concatenate([q_labels_raw, c_labels_raw]), return_inverse=True)
    q_codes, c_codes = codes[:n_q], codes[n_q:]
    class_counts = np.bincount(c_codes, minlength=len(classes))
    has_self = self_idx >= 0
    r = class_counts[q_codes] - (has_self & (c_codes[np.maximum(self_idx, 0)] == q_codes))
    # Without self the candidate pool shrinks by one.
    n_cand = n_c - has_self.astype(np.int64)

    hits = np.zeros((n_q, len(k_values)), dtype=bool)
    ap = np.zeros(n_q, dtype=np.float64)
    c_sq = (c.astype(np.float64) ** 2).sum(axis=1).astype(np.float32) if distance == "l2" else None
    sub_rows = max(1, rank_block_elements // max(n_c, 1))

    for start in range(0, n_q, batch_size):
        stop = min(start + batch_size, n_q)
        scores = _scores(q[start:stop], c, c_sq)
        rows = np.arange(stop - start)
        sel = has_self[start:stop]
        scores[rows[sel], self_idx[start:stop][sel]] = np.inf
        for s0 in range(0, stop - start, sub_rows):
            s1 = min(s0 + sub_rows, stop - start)
            g = slice(start + s0, start + s1)
            block = scores[s0:s1]
            depth = int(min(max(r[g].max(initial=0), k_values[-1]), n_c))
            if depth == 0:  # empty catalogue: every query is skipped below
                continue
            if depth < n_c:
                top = np.argpartition(block, depth - 1, axis=1)[:, :depth]
            else:
                top = np.broadcast_to(np.arange(n_c), block.shape).copy()
            # Sorting indices first, then a stable sort by score, breaks ties by
            # catalogue order (cheaper than lexsort).
            top.sort(axis=1)
            top_scores = np.take_along_axis(block, top, axis=1)
            order = np.argsort(top_scores, axis=1, kind="stable")
            top = np.take_along_axis(top, order, axis=1)
            # Positions beyond the candidate pool (only the excluded self) never count.
            valid = np.arange(depth)[None, :] < n_cand[g][:, None]
            rel = (c_codes[top] == q_codes[g][:, None]) & valid
            for j, k in enumerate(k_values):
                hits[g, j] = rel[:, :k].any(axis=1)
            ranks = np.arange(1, depth + 1)[None, :]
            precision = np.cumsum(rel, axis=1) / ranks
            within_r = ranks <= r[g][:, None]
            ap[g] = (precision * rel * within_r).sum(axis=1) / np.maximum(r[g], 1)

    evaluated = r > 0
    n_eval = int(evaluated.sum())

    def _mean(x: np.ndarray) -> float:
        return float(x.mean()) if len(x) else float("nan")

    recall = {k: _mean(hits[evaluated, j]) for j, k in enumerate(k_values)}
    map_at_r = _mean(ap[evaluated])

    rows_out = []
    for code in np.unique(q_codes[evaluated]):
        m = evaluated & (q_codes == code)
        row: dict[str, object] = {"class": classes[code].item(), "n_queries": int(m.sum())}
        for j, k in enumerate(k_values):
            row[f"recall_at_{k}"] = float(hits[m, j].mean())
        row["map_at_r"] = float(ap[m].mean())
        rows_out.append(row)
    columns = ["class", "n_queries", *(f"recall_at_{k}" for k in k_values), "map_at_r"]
    per_class = pd.DataFrame(rows_out, columns=columns)

    return RetrievalReport(
        recall_at_k=recall,
        map_at_r=map_at_r,
        per_class=per_class,
        n_queries=n_eval,
        n_skipped=n_q - n_eval,
        distance=distance,
        k_values=k_values,
    )


# --------------------------------------------------------------------------- plots


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)  # attaches the Agg canvas; no global backend switch needed
    return fig


def _label_text(label: object, class_names: Mapping | Sequence | None) -> str:
    if class_names is None:
        return str(label)
    try:
        return str(class_names[label])  # type: ignore[index]
    except (KeyError, IndexError, TypeError):
        return str(label)


def _show_image(ax, image: np.ndarray) -> None:
    img = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        ax.imshow(img, cmap="gray", vmin=0.0, vmax=1.0)
    else:
        ax.imshow(img)
    ax.set_xticks([])
    ax.set_yticks([])


def _colour_frame(ax, colour: str, width: float = 3.0) -> None:
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(width)


def plot_neighbour_grid(
    query_images: np.ndarray,
    neighbour_images: np.ndarray,
    neighbour_labels: np.ndarray,
    query_labels: np.ndarray,
    path: str | Path,
    class_names: Mapping | Sequence | None = None,
) -> Path:
    """PNG grid: one row per query, the query first, its neighbours to the right.

    Images are floats in [0, 1], (H, W) or (H, W, C). Neighbour frames and
    titles are green when the label matches the query's, red otherwise.
    ``neighbour_images`` is (n_queries, k, H, W[, C]); ``neighbour_labels`` is
    (n_queries, k).
    """
    query_images = np.asarray(query_images)
    neighbour_images = np.asarray(neighbour_images)
    neighbour_labels = np.asarray(neighbour_labels)
    query_labels = np.asarray(query_labels)
    n_q = len(query_images)
    if n_q == 0:
        raise ValueError("need at least one query")
    if len(neighbour_images) != n_q or len(query_labels) != n_q or len(neighbour_labels) != n_q:
        raise ValueError("query and neighbour arrays must have one entry per query")
    k = neighbour_images.shape[1]
    if neighbour_labels.shape[:2] != (n_q, k):
        raise ValueError(f"neighbour_labels must have shape ({n_q}, {k})")

    cell = 1.4
    fig = _new_figure(cell * (k + 1), cell * n_q + 0.3)
    axes = fig.subplots(n_q, k + 1, squeeze=False)
    for i in range(n_q):
        ax = axes[i, 0]
        _show_image(ax, query_images[i])
        _colour_frame(ax, "black")
        ax.set_title(f"query: {_label_text(query_labels[i], class_names)}", fontsize=7)
        for j in range(k):
            ax = axes[i, j + 1]
            _show_image(ax, neighbour_images[i, j])
            match = neighbour_labels[i, j] == query_labels[i]
            colour = "tab:green" if match else "tab:red"
            _colour_frame(ax, colour)
            ax.set_title(_label_text(neighbour_labels[i, j], class_names), fontsize=7, color=colour)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    return path


def pca_2d(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project onto the top-2 principal components via SVD.

    Returns (points (n, 2), explained variance ratio (2,)); pads with zeros
    when the data has fewer than two dimensions or samples.
    """
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"expected a non-empty (n, dim) array, got shape {x.shape}")
    x = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    n_comp = min(2, vt.shape[0])
    points = np.zeros((len(x), 2))
    points[:, :n_comp] = x @ vt[:n_comp].T
    total = float((s**2).sum())
    ratio = np.zeros(2)
    if total > 0:
        ratio[:n_comp] = s[:n_comp] ** 2 / total
    return points, ratio


def plot_projection(
    vectors: np.ndarray,
    labels: Sequence | np.ndarray,
    path: str | Path,
    class_names: Mapping | Sequence | None = None,
) -> Path:
    """2-D PCA scatter of ``vectors`` coloured by label, with a legend, as PNG."""
    labels = np.asarray(labels)
    points, ratio = pca_2d(vectors)
    if len(labels) != len(points):
        raise ValueError("labels must have one entry per vector")
    fig = _new_figure(7.0, 6.0)
    ax = fig.subplots()
    classes = np.unique(labels)
    # tab10 keeps up to 10 classes clearly apart (tab20 pairs near-identical hues);
    # beyond 20 classes colours repeat.
    cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
    for i, cls in enumerate(classes):
        m = labels == cls
        colour = cmap(i % cmap.N)
        ax.scatter(
            points[m, 0], points[m, 1], s=6, alpha=0.7, color=colour,
            label=_label_text(cls.item() if hasattr(cls, "item") else cls, class_names),
        )
    ax.set_xlabel(f"PC1 ({ratio[0]:.1%} var)")
    ax.set_ylabel(f"PC2 ({ratio[1]:.1%} var)")
    ax.set_title("Embedding projection (PCA)")
    ax.legend(loc="best", fontsize=7, markerscale=2, frameon=False)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    return path
