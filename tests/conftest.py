"""Shared fixtures: paths to the sample data, small random images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def photo() -> np.ndarray:
    """A real photo (non-square), downscaled so that tests stay fast."""
    from PIL import Image

    path = REPO / "segany" / "assets" / "dog.jpg"
    with Image.open(path) as image:
        return np.array(image.convert("RGB").resize((200, 134)))
