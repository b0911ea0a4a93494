"""Overlays: masks are tinted, the rest of the photo is untouched, prompts are drawn."""

from __future__ import annotations

import numpy as np

from segany.visualize import overlay_masks, palette


def test_palette_sizes_and_distinct_colours():
    assert palette(0).shape == (0, 3)
    colours = palette(8)
    assert colours.shape == (8, 3) and colours.dtype == np.uint8
    assert len({tuple(c) for c in colours}) == 8


def test_overlay_tints_only_masked_pixels():
    image = np.full((40, 60, 3), 100, np.uint8)
    mask = np.zeros((40, 60), bool)
    mask[10:30, 20:40] = True
    out = overlay_masks(image, [mask])
    assert out.shape == image.shape and out.dtype == np.uint8
    assert (out[15:25, 25:35] != 100).any(axis=-1).all()  # interior tinted
    assert (out[:5, :5] == 100).all() and (out[35:, 50:] == 100).all()  # far outside untouched


def test_overlay_draws_points_without_masks():
    image = np.zeros((50, 50, 3), np.uint8)
    out = overlay_masks(image, [], points=np.array([[25.0, 25.0]]), labels=np.array([0]))
    assert out[25, 25, 0] > 200 and out[25, 25, 1] == 0  # a red (negative) dot
