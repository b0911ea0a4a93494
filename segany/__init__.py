"""segany: Segment Anything, complete.

A drop-in for the official ``segment_anything`` package (same names, arguments and outputs),
plus automatic mask generation at scale, training, evaluation, a data-engine web app and export.

The public names load on first use (PEP 562), so that torch-free parts such as
``segany.export.OnnxPredictor`` import without PyTorch installed.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "CONFIGS": "segany.build",
    "SamConfig": "segany.build",
    "build_sam": "segany.build",
    "build_sam_vit_b": "segany.build",
    "build_sam_vit_h": "segany.build",
    "build_sam_vit_l": "segany.build",
    "sam_model_registry": "segany.build",
    "save_sam": "segany.build",
    "read_image": "segany.io",
    "Sam": "segany.modeling",
    "SamPredictor": "segany.predictor",
    "SamAutomaticMaskGenerator": "segany.automask",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'segany' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
