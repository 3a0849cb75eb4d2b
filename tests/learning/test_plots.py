"""Diagnostic plots: neighbour grid colours and the PCA projection."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.image import imread

from lookalike.learning.plots import pca_2d, plot_neighbour_grid, plot_projection


def colour_present(png: np.ndarray, rgb: tuple[float, float, float], tol: float = 0.05) -> bool:
    return bool((np.abs(png[..., :3] - np.array(rgb)) < tol).all(axis=-1).any())


TAB_GREEN = (0x2C / 255, 0xA0 / 255, 0x2C / 255)


TAB_RED = (0xD6 / 255, 0x27 / 255, 0x28 / 255)


@pytest.mark.parametrize("channels", [None, 1, 3])
def test_neighbour_grid_png_marks_matches_green_and_misses_red(tmp_path, channels):
    rng = np.random.default_rng(0)
    shape = (3, 12, 12) if channels is None else (3, 12, 12, channels)
    # Greyscale pixels so the only saturated colours come from the frames.
    queries = rng.random(shape)
    neighbours = rng.random((3, 4) + shape[1:])
    mixed = tmp_path / "mixed.png"
    plot_neighbour_grid(queries, neighbours, np.array([[0, 1, 0, 0]] * 3), np.array([0, 0, 0]), mixed)
    img = imread(mixed)
    assert mixed.stat().st_size > 1000 and img.shape[0] > 100
    assert colour_present(img, TAB_GREEN) and colour_present(img, TAB_RED)

    if channels is None:
        all_match = tmp_path / "match.png"
        plot_neighbour_grid(queries, neighbours, np.zeros((3, 4), int), np.zeros(3, int), all_match,
                            class_names=["shoe", "bag"])
        img = imread(all_match)
        assert colour_present(img, TAB_GREEN) and not colour_present(img, TAB_RED)


def test_pca_projection_recovers_planar_data_and_writes_png(tmp_path):
    rng = np.random.default_rng(1)
    plane = rng.normal(size=(200, 2)) * np.array([5.0, 1.0])
    basis = np.linalg.qr(rng.normal(size=(6, 2)))[0]  # orthonormal 2-D subspace of R^6
    vectors = plane @ basis.T + 3.0
    points, ratio = pca_2d(vectors)
    assert ratio.sum() == pytest.approx(1.0)
    assert ratio[0] > ratio[1]
    # A rotation of the original plane: pairwise distances are preserved.
    d_in = np.linalg.norm(vectors[:50, None] - vectors[None, :50], axis=-1)
    d_out = np.linalg.norm(points[:50, None] - points[None, :50], axis=-1)
    np.testing.assert_allclose(d_out, d_in, atol=1e-8)

    labels = (plane[:, 0] > 0).astype(int)
    path = plot_projection(vectors, labels, tmp_path / "sub" / "pca.png", class_names={0: "left", 1: "right"})
    assert path.exists() and path.stat().st_size > 1000
    assert imread(path).shape[:2] == (600, 700)


def test_category_names_are_text_not_mathtext(tmp_path):
    """Issue 19, item 7: a category named like ``$x^{$`` made matplotlib parse mathtext and
    fail the plot; ``_hidden`` vanished from the legend."""
    rng = np.random.default_rng(0)
    names = ["$x^{$", "_hidden", "a $5 shirt"]
    images = rng.random((3, 8, 8, 1))
    grid = plot_neighbour_grid(images, rng.random((3, 2, 8, 8, 1)),
                               np.array([[0, 1], [1, 2], [2, 0]]), np.array([0, 1, 2]),
                               tmp_path / "grid.png", class_names=names)
    assert imread(grid).shape[0] > 0
    projection = plot_projection(rng.random((30, 4)), np.arange(30) % 3,
                                 tmp_path / "projection.png", class_names=names)
    assert imread(projection).shape[0] > 0
