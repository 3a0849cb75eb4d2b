"""Diagnostic plots of an embedding: a neighbour grid and a 2-D PCA projection.

Plots use matplotlib's Agg canvas directly on a ``Figure`` (no pyplot state), so they work
headless and from worker threads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["plot_neighbour_grid", "plot_projection", "pca_2d"]


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)  # attaches the Agg canvas; no global backend switch needed
    return fig


def _label_text(label: object, class_names: Mapping | Sequence | None) -> str:
    """A category name as literal text: ``$...$`` would be parsed as mathtext (and can fail
    the whole plot), and a legend label starting with ``_`` would be hidden."""
    text = str(label)
    if class_names is not None:
        try:
            text = str(class_names[label])  # type: ignore[index]
        except (KeyError, IndexError, TypeError):
            pass
    text = text.replace("$", r"\$")
    return "\u200b" + text if text.startswith("_") else text


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
