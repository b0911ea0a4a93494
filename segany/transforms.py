"""Resize images so that their longest side matches the encoder input, and map prompts alongside.

The image is resized with PIL's bilinear filter (with its antialiasing), as the official
package does, so that the same photo gives the same pixels to the encoder. torch is imported
only by the ``*_torch`` methods, so that the torch-free ONNX predictor can use this class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch


class ResizeLongestSide:
    def __init__(self, target_length: int) -> None:
        self.target_length = target_length

    @staticmethod
    def get_preprocess_shape(old_h: int, old_w: int, long_side_length: int) -> tuple[int, int]:
        """Size (h, w) after scaling so that the longest side is ``long_side_length``, rounded half up."""
        scale = long_side_length * 1.0 / max(old_h, old_w)
        return int(old_h * scale + 0.5), int(old_w * scale + 0.5)

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """Resize an HxWx3 uint8 image."""
        height, width = self.get_preprocess_shape(image.shape[0], image.shape[1], self.target_length)
        return np.array(Image.fromarray(image).resize((width, height), Image.BILINEAR))

    def _scale(self, original_size: tuple[int, ...]) -> tuple[float, float]:
        old_h, old_w = original_size
        new_h, new_w = self.get_preprocess_shape(old_h, old_w, self.target_length)
        return new_w / old_w, new_h / old_h

    def apply_coords(self, coords: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        """Map (..., 2) pixel (x, y) points of the original image into the resized image."""
        scale_x, scale_y = self._scale(original_size)
        coords = np.array(coords, dtype=float)
        coords[..., 0] *= scale_x
        coords[..., 1] *= scale_y
        return coords

    def apply_boxes(self, boxes: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        """Map (..., 4) XYXY boxes into the resized image."""
        return self.apply_coords(np.asarray(boxes).reshape(-1, 2, 2), original_size).reshape(-1, 4)

    def apply_image_torch(self, image: torch.Tensor) -> torch.Tensor:
        """Resize a batch of B x 3 x H x W float images (bilinear with antialiasing)."""
        from torch.nn import functional as F

        height, width = self.get_preprocess_shape(image.shape[2], image.shape[3], self.target_length)
        return F.interpolate(image, (height, width), mode="bilinear", align_corners=False, antialias=True)

    def apply_coords_torch(self, coords: torch.Tensor, original_size: tuple[int, ...]) -> torch.Tensor:
        import torch

        scale_x, scale_y = self._scale(original_size)
        coords = coords.clone().to(torch.float)
        coords[..., 0] *= scale_x
        coords[..., 1] *= scale_y
        return coords

    def apply_boxes_torch(self, boxes: torch.Tensor, original_size: tuple[int, ...]) -> torch.Tensor:
        return self.apply_coords_torch(boxes.reshape(-1, 2, 2), original_size).reshape(-1, 4)
