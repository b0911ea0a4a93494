"""OnnxPredictor: SamPredictor's API on the exported ONNX graphs, with onnxruntime and numpy only.

For machines without PyTorch: nothing here (or in what it imports) imports torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from segany.export import interface
from segany.prompt_checks import check_box, check_mask_input, check_points
from segany.io import check_image_array
from segany.transforms import ResizeLongestSide


class OnnxPredictor:
    """Embed an image once with ``encoder.onnx``, then prompt ``decoder.onnx`` many times.

    ``model_dir`` is a folder written by ``segany export onnx``. ``providers`` are
    onnxruntime execution providers, e.g. ``["CUDAExecutionProvider", "CPUExecutionProvider"]``.
    """

    def __init__(self, model_dir: str | os.PathLike, providers: Sequence[str] = ("CPUExecutionProvider",)) -> None:
        import onnxruntime

        model_dir = Path(model_dir)
        paths = [model_dir / interface.ENCODER_FILE, model_dir / interface.DECODER_FILE]
        for path in paths:
            if not path.is_file():
                raise FileNotFoundError(f"{path} not found: expected a folder written by 'segany export onnx'")
        self.encoder, self.decoder = (onnxruntime.InferenceSession(str(p), providers=list(providers)) for p in paths)
        metadata = self.decoder.get_modelmeta().custom_metadata_map
        try:
            self.image_size = int(metadata[interface.META_IMAGE_SIZE])
            self.embedding_shape = tuple(int(v) for v in metadata[interface.META_EMBEDDING_SHAPE].split(","))
            self.mask_threshold = float(metadata[interface.META_MASK_THRESHOLD])
        except KeyError as missing:
            raise ValueError(f"{paths[1]} lacks segany metadata {missing}: export it with 'segany export onnx'") from None
        self.mask_input_size = (4 * self.embedding_shape[1], 4 * self.embedding_shape[2])
        self.transform = ResizeLongestSide(self.image_size)
        self.reset_image()

    def reset_image(self) -> None:
        self.is_image_set = False
        self.features: np.ndarray | None = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Compute the embedding of an HxWx3 uint8 image in ``image_format`` ("RGB" or "BGR")."""
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        check_image_array(image)
        if image_format == "BGR":
            image = image[..., ::-1]
        resized = self.transform.apply_image(np.ascontiguousarray(image))
        pixels = resized.transpose(2, 0, 1)[None].astype(np.float32)
        (features,) = self.encoder.run(None, {"image": pixels})
        self.set_image_embedding(features, image.shape[:2], resized.shape[:2])

    def set_image_embedding(
        self, features: np.ndarray, original_size: tuple[int, ...], input_size: tuple[int, ...]
    ) -> None:
        """Use a precomputed embedding of an image of ``original_size`` resized to ``input_size``."""
        features = np.asarray(features, dtype=np.float32)
        if features.shape != (1, *self.embedding_shape):
            raise ValueError(f"image embedding must have shape {(1, *self.embedding_shape)}, got {features.shape}")
        self.features = features
        self.original_size = (int(original_size[0]), int(original_size[1]))
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.is_image_set = True

    def get_image_embedding(self) -> np.ndarray:
        self._require_image()
        return self.features

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks (C x H x W), predicted IoUs (C) and low-res logits (C x h x w), as SamPredictor.predict."""
        self._require_image()
        coords, labels = np.zeros((0, 2)), np.zeros(0)
        if point_coords is not None or point_labels is not None:
            coords, labels = check_points(point_coords, point_labels, self.original_size)
        if box is not None:
            corners = check_box(box, self.original_size).reshape(2, 2)
            coords = np.concatenate([coords, corners])
            labels = np.concatenate([labels, interface.BOX_CORNER_LABELS])
        elif len(coords):
            # Without a box the model expects one padding point, as it was trained.
            coords = np.concatenate([coords, np.zeros((1, 2))])
            labels = np.concatenate([labels, [interface.PAD_LABEL]])
        if mask_input is None and not len(coords):
            raise ValueError("no prompt given: pass point_coords/point_labels, box, or mask_input")
        has_mask = mask_input is not None
        if has_mask:
            mask = check_mask_input(mask_input, self.mask_input_size)[None]
        else:
            mask = np.zeros((1, 1, *self.mask_input_size), dtype=np.float32)
        inputs = {
            "image_embeddings": self.features,
            "point_coords": self.transform.apply_coords(coords, self.original_size)[None].astype(np.float32),
            "point_labels": labels[None].astype(np.float32),
            "mask_input": mask,
            "has_mask_input": np.array([float(has_mask)], dtype=np.float32),
            "orig_im_size": np.array(self.original_size, dtype=np.float32),
        }
        masks, iou_predictions, low_res = self.decoder.run(None, inputs)
        chosen = slice(1, None) if multimask_output else slice(0, 1)
        masks, iou_predictions, low_res = masks[0, chosen], iou_predictions[0, chosen], low_res[0, chosen]
        if not return_logits:
            masks = masks > self.mask_threshold
        return masks, iou_predictions, low_res

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise ValueError("an image must be set with .set_image(...) before mask prediction")
