"""Fixtures for the automatic-generation command: a small image collection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def photo_collection(tmp_path_factory) -> Path:
    """Three small photos, one in a subfolder, at different sizes and aspect ratios."""
    folder = tmp_path_factory.mktemp("photos")
    assets = REPO / "segany" / "assets"
    with Image.open(assets / "dog.jpg") as dog, Image.open(assets / "truck.jpg") as truck:
        dog.convert("RGB").resize((96, 64)).save(folder / "dog.jpg", quality=95)
        truck.convert("RGB").resize((60, 90)).save(folder / "truck.png")
        (folder / "more").mkdir()
        np_crop = np.array(dog.convert("RGB"))[100:300, 200:400]
        Image.fromarray(np_crop).resize((70, 70)).save(folder / "more" / "dog-crop.jpg", quality=95)
    return folder
