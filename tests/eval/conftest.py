"""Fixtures for the evaluation tests: a small synthetic dataset on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eval_doubles import image_key, shapes_image


@pytest.fixture
def shapes_dataset(tmp_path, rng) -> tuple[Path, dict[str, list[np.ndarray]]]:
    """Two images in the ``img/`` + ``gt/`` layout (NAME_1.png, NAME_2.png per object)."""
    root = tmp_path / "shapes"
    (root / "img").mkdir(parents=True)
    (root / "gt").mkdir()
    objects = {}
    for name in ("first", "second"):
        image, masks = shapes_image(rng)
        Image.fromarray(image).save(root / "img" / f"{name}.png")
        for number, mask in enumerate(masks, 1):
            Image.fromarray(mask.astype(np.uint8) * 255).save(root / "gt" / f"{name}_{number}.png")
        objects[image_key(image)] = masks
    return root, objects
