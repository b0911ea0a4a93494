"""Shared fixtures: paths to the sample data, small random images, tiny random SAM and CLIP weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

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


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """Seeded random weights of the tiny config as segany safetensors (config in the header), saved once."""
    import segany

    torch.manual_seed(0)
    return segany.save_sam(segany.build_sam("tiny"), tmp_path_factory.mktemp("weights") / "tiny.safetensors")


@pytest.fixture(scope="session")
def clip_weights(tmp_path_factory) -> Path:
    """The tiny random open_clip model of ``tiny_clip`` (registered in this process), as a local weights file."""
    pytest.importorskip("open_clip", reason="the optional extra segany[text] (open-clip-torch) is not installed")
    from tiny_clip import save_tiny_clip

    return save_tiny_clip(tmp_path_factory.mktemp("clip"))
