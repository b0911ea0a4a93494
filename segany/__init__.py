"""segany: Segment Anything, complete.

A drop-in for the official ``segment_anything`` package (same names, arguments and outputs),
plus automatic mask generation at scale, training, evaluation, a data-engine web app and export.
"""

from segany.build import (
    CONFIGS,
    SamConfig,
    build_sam,
    build_sam_vit_b,
    build_sam_vit_h,
    build_sam_vit_l,
    sam_model_registry,
    save_sam,
)
from segany.io import read_image
from segany.modeling import Sam
from segany.predictor import SamPredictor

__version__ = "0.1.0"

__all__ = [
    "CONFIGS",
    "Sam",
    "SamConfig",
    "SamPredictor",
    "build_sam",
    "build_sam_vit_b",
    "build_sam_vit_h",
    "build_sam_vit_l",
    "read_image",
    "sam_model_registry",
    "save_sam",
]
