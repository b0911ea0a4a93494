"""A tiny random open_clip model saved to local files, so tests run the real CLIP path without a download.

open_clip knows architectures only from its registry, so the architecture is written as a
JSON config beside the weights; ``register`` adds it to the registry of this process (a
subprocess, e.g. ``segany serve``, runs :data:`REGISTER_THEN_CLI` to do the same).
"""

from __future__ import annotations

import json
from pathlib import Path

ARCHITECTURE = "segany-test-tiny-clip"
WIDTH = 16
TINY_CLIP = {
    "embed_dim": WIDTH,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
# ``python -c REGISTER_THEN_CLI CONFIG COMMAND ...``: the segany CLI with the tiny architecture registered.
REGISTER_THEN_CLI = ("import sys, open_clip; open_clip.add_model_config(sys.argv.pop(1)); "
                     "from segany.cli import main; sys.exit(main())")


def config_path(weights: Path) -> Path:
    """The architecture's JSON config, saved beside ``weights`` by :func:`save_tiny_clip`."""
    return weights.parent / f"{ARCHITECTURE}.json"


def save_tiny_clip(folder: Path) -> Path:
    """Register the tiny architecture and save seeded random weights for it in ``folder``; returns the weights."""
    import open_clip
    import torch

    weights = folder / "tiny_clip.pt"
    config_path(weights).write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(config_path(weights))
    torch.manual_seed(0)
    torch.save(open_clip.create_model(ARCHITECTURE).state_dict(), weights)
    return weights
