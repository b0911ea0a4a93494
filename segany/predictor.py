"""SamPredictor: embed an image once, then answer any number of prompts on it cheaply."""

from __future__ import annotations

from functools import partial

import numpy as np
import torch

from segany.io import check_image_array
from segany.modeling import Sam
from segany.modeling.streams import cpu_streams
from segany.modeling.weight_state import weights_state
from segany.prompt_checks import check_box, check_mask_input, check_points
from segany.speed.cuda_graphs import PromptGraphs, storage_state
from segany.text import PromptEmbedder
from segany.transforms import ResizeLongestSide


class ImageNotSetError(RuntimeError, ValueError):
    """Prompting before ``set_image``. A RuntimeError like the official package's, and a ValueError."""


class SamPredictor:
    def __init__(
        self, sam_model: Sam, text_encoder: PromptEmbedder | None = None, cuda_graphs: bool = True
    ) -> None:
        """``text_encoder`` (e.g. :class:`segany.text.OpenClipEmbedder`) enables ``predict(text=...)``
        on a model trained with text prompts. On a GPU, a kind of prompt asked a second time on
        an image is replayed as a CUDA graph (:mod:`segany.speed.cuda_graphs`; same results,
        without the CPU's launch overhead) unless ``cuda_graphs`` is False."""
        if text_encoder is not None:
            sam_model.prompt_encoder.check_text_width(text_encoder.embed_dim)
        self.model = sam_model
        self.text_encoder = text_encoder
        self.transform = ResizeLongestSide(sam_model.image_encoder.img_size)
        self._graphs = PromptGraphs() if cuda_graphs else None
        self._image_generation = 0
        self.reset_image()

    @property
    def device(self) -> torch.device:
        return self.model.device

    def reset_image(self) -> None:
        self._image_generation += 1  # graphs of the previous image's prompts no longer apply
        self.is_image_set = False
        self.features: torch.Tensor | None = None
        self._image_pe: torch.Tensor | None = None
        self._image_side = None
        self._image_side_state: tuple = ()
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None
        self.orig_h = self.orig_w = self.input_h = self.input_w = None

    @torch.inference_mode()
    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Compute the embedding of an HxWx3 uint8 image in ``image_format`` ("RGB" or "BGR")."""
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        check_image_array(image)
        if image_format != self.model.image_format:
            image = image[..., ::-1]
        resized = self.transform.apply_image(np.ascontiguousarray(image))
        tensor = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None]
        self.set_torch_image(tensor, image.shape[:2])

    @torch.inference_mode()
    def set_torch_image(self, transformed_image: torch.Tensor, original_image_size: tuple[int, ...]) -> None:
        """Embed an already-resized 1x3xHxW image whose longest side is the encoder size."""
        shape = tuple(transformed_image.shape)
        if len(shape) != 4 or shape[0] != 1 or shape[1] != 3 or max(shape[2:]) != self.model.img_size:
            raise ValueError(
                f"set_torch_image expects a 1x3xHxW tensor with longest side {self.model.img_size}, got {shape}"
            )
        self.reset_image()
        dtype = next(self.model.image_encoder.parameters()).dtype
        pixels = self.model.preprocess(transformed_image.to(self.device, torch.float32)).to(dtype)
        self.set_image_embedding(self.model.image_encoder(pixels).float(), original_image_size, shape[2:])

    @torch.inference_mode()
    def set_image_embedding(
        self, features: torch.Tensor, original_size: tuple[int, ...], input_size: tuple[int, ...]
    ) -> None:
        """Use a precomputed embedding (e.g. from a cache) of an image of ``original_size``
        that was resized to ``input_size`` before encoding."""
        expected = (1, self.model.prompt_encoder.embed_dim, *self.model.prompt_encoder.image_embedding_size)
        if tuple(features.shape) != expected:
            raise ValueError(f"image embedding must have shape {expected}, got {tuple(features.shape)}")
        self.original_size = (int(original_size[0]), int(original_size[1]))
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.orig_h, self.orig_w = self.original_size
        self.input_h, self.input_w = self.input_size
        self.features = features.to(self.device)
        self._make_image_side()
        self.is_image_set = True

    def _make_image_side(self) -> None:
        """The prompt-independent decoder work on the image, shared by every prompt without a
        mask input, and the state of the weights it was made from."""
        encoder = self.model.prompt_encoder
        self._image_side_state = self._image_side_weights_state()
        self._image_pe = encoder.get_dense_pe()
        no_mask = encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        self._image_side = self.model.mask_decoder.image_side(self.features, self._image_pe, no_mask)
        self._image_generation += 1  # graphs that read the previous image side no longer apply

    def _image_side_weights_state(self) -> tuple:
        """The :func:`weights_state` of what :meth:`_make_image_side` reads: when it changes
        (weights loaded or trained in place after ``set_image``), the image side is made again."""
        return weights_state(*self.model.prompt_encoder.dense_weights(), *self.model.mask_decoder.image_side_weights())

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        text: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks (C x H x W), their predicted IoUs (C) and low-res logits (C x h x w) for one prompt.

        Points are pixel (x, y) of the original image with labels 1 (foreground) / 0
        (background); ``box`` is XYXY; ``mask_input`` is a previous call's low-res logits
        (1 x h x w); ``text`` names the object (needs the predictor's ``text_encoder``). C is
        3 with ``multimask_output`` and 1 without.
        """
        self._require_image()
        coords_torch = labels_torch = box_torch = mask_torch = text_torch = None
        if point_coords is not None or point_labels is not None:
            coords, labels = check_points(point_coords, point_labels, self.original_size)
            coords = self.transform.apply_coords(coords, self.original_size)
            coords_torch = torch.as_tensor(coords, dtype=torch.float, device=self.device)[None]
            labels_torch = torch.as_tensor(labels, dtype=torch.int, device=self.device)[None]
        if box is not None:
            box = self.transform.apply_boxes(check_box(box, self.original_size), self.original_size)
            box_torch = torch.as_tensor(box, dtype=torch.float, device=self.device)
        if mask_input is not None:
            mask = check_mask_input(mask_input, self.model.prompt_encoder.mask_input_size)
            mask_torch = torch.as_tensor(mask, dtype=torch.float, device=self.device)[None]
        if text is not None:
            text_torch = self._embed_text(text)
        if coords_torch is None and box_torch is None and mask_torch is None and text_torch is None:
            raise ValueError("no prompt given: pass point_coords/point_labels, box, mask_input, or text")
        masks, iou_predictions, low_res_masks = self.predict_torch(
            coords_torch, labels_torch, box_torch, mask_torch, multimask_output, return_logits, text_torch
        )
        return masks[0].cpu().numpy(), iou_predictions[0].cpu().numpy(), low_res_masks[0].cpu().numpy()

    @torch.inference_mode()
    def predict_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        text_embeddings: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batched prompts already in the resized frame (see ``transform``): BxNx2, BxN, Bx4, Bx1xhxw,
        and CLIP embeddings BxTxD (T text tokens per prompt)."""
        self._require_image()
        if point_coords is not None and (
            point_labels is None or point_coords.shape[:2] != point_labels.shape[:2] or point_coords.shape[-1] != 2
        ):
            raise ValueError(
                "point_coords must be BxNx2 with point_labels BxN, got "
                f"{tuple(point_coords.shape)} and {None if point_labels is None else tuple(point_labels.shape)}"
            )
        if boxes is not None and (boxes.ndim != 2 or boxes.shape[-1] != 4):
            raise ValueError(f"boxes must be Bx4 (XYXY), got {tuple(boxes.shape)}")
        if self._image_side_weights_state() != self._image_side_state:
            self._make_image_side()
        inputs = (point_coords, point_labels, boxes, mask_input, text_embeddings)
        answer = partial(self._answer, multimask_output=multimask_output, return_logits=return_logits)
        if self._graphs is None or self.features.device.type != "cuda":
            return answer(*inputs)
        model = self.model
        state = (self._image_generation, storage_state(model.prompt_encoder, model.mask_decoder))
        return self._graphs.run((multimask_output, return_logits), state, answer, inputs)

    def _answer(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        mask_input: torch.Tensor | None,
        text_embeddings: torch.Tensor | None,
        multimask_output: bool,
        return_logits: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`predict_torch` on checked inputs, eagerly."""
        points = None if point_coords is None else (point_coords, point_labels)
        # On the CPU the prompt's work is split between parallel streams (segany.modeling.streams).
        with cpu_streams(self.features) as streams:
            sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=mask_input, text=text_embeddings)
            low_res_masks, iou_predictions = self.model.mask_decoder(
                image_embeddings=self.features,
                image_pe=self._image_pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask_output,
                image_side=self._image_side if mask_input is None else None,
                streams=streams,
            )
            threshold = None if return_logits else self.model.mask_threshold
            masks = self.model.postprocess_masks(low_res_masks, self.input_size, self.original_size, threshold, streams)
        return masks, iou_predictions, low_res_masks

    def get_image_embedding(self) -> torch.Tensor:
        """The current image's embedding, 1 x C x h x w."""
        self._require_image()
        return self.features

    def _embed_text(self, text: str) -> torch.Tensor:
        """A phrase's embedding from ``text_encoder``, as a 1 x 1 x D prompt."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"text must be a non-empty string, got {text!r}")
        if self.text_encoder is None:
            raise ValueError(
                "text prompts need a text encoder: SamPredictor(model, text_encoder=OpenClipEmbedder(name, weights))"
            )
        self.model.prompt_encoder.check_text_width(self.text_encoder.embed_dim)
        return self.text_encoder.embed_texts([text]).to(self.device, torch.float)[None]

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise ImageNotSetError("an image must be set with .set_image(...) before mask prediction")
