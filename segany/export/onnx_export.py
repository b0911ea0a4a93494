"""Export a Sam to two ONNX graphs: the image encoder, and prompts -> masks.

The encoder graph takes the resized image and does the normalisation and padding itself,
so a runtime only has to resize. The decoder graph (prompt encoder + mask decoder + mask
upscaling) has the official decoder export's inputs and outputs, so tools written for the
official ``sam_onnx_*.onnx`` files take ours. It returns all four mask tokens' outputs;
the caller picks token 0 (single mask) or tokens 1-3 (multimask), as ``OnnxPredictor`` does.

Both graphs are traced with the TorchScript-based exporter (``dynamo=False``): the decoder's
output size depends on an input's *values* (``orig_im_size``), which tracing records as
shape arithmetic in the graph.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn
from torch.nn import functional as F

from segany.export import interface
from segany.modeling import Sam

OPSET = 17


class EncoderGraph(nn.Module):
    """Normalise, pad and encode a resized RGB image (1 x 3 x h x w, values 0-255)."""

    def __init__(self, sam: Sam) -> None:
        super().__init__()
        self.sam = sam

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.sam.image_encoder(self.sam.preprocess(image))


class DecoderGraph(nn.Module):
    """Labelled points (and box corners), an optional mask prompt and the image size -> masks.

    Everything that depends on which prompts are present is expressed with arithmetic on
    the labels and ``has_mask_input`` instead of Python branches, so one graph serves all.
    """

    def __init__(self, sam: Sam) -> None:
        super().__init__()
        self.sam = sam

    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Tokens for points labelled -1 (padding), 0, 1 (negative/positive) or 2, 3 (box corners)."""
        encoder = self.sam.prompt_encoder
        tokens = encoder.pe_layer.points(coords + 0.5, encoder.input_image_size)
        labels = labels[..., None]
        tokens = torch.where(labels == interface.PAD_LABEL, encoder.not_a_point_embed.weight, tokens)
        for label, embedding in enumerate(encoder.point_embeddings):
            tokens = tokens + (labels == label) * embedding.weight
        return tokens

    def embed_mask(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        encoder = self.sam.prompt_encoder
        no_mask = encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        return has_mask_input * encoder.embed_masks(mask_input) + (1 - has_mask_input) * no_mask

    def upscale(self, low_res: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
        """Low-res logits to the padded input, crop the padding, resize to the original size."""
        size = self.sam.img_size
        masks = F.interpolate(low_res, size=(size, size), mode="bilinear", align_corners=False)
        scale = size / orig_im_size.max()
        input_size = torch.floor(orig_im_size * scale + 0.5).to(torch.int64)
        masks = masks[..., : input_size[0], : input_size[1]]
        original = orig_im_size.to(torch.int64)
        return F.interpolate(masks, size=(original[0], original[1]), mode="bilinear", align_corners=False)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        orig_im_size: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        low_res, iou_predictions = self.sam.mask_decoder.predict_masks(
            image_embeddings=image_embeddings,
            image_pe=self.sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=self.embed_points(point_coords, point_labels),
            dense_prompt_embeddings=self.embed_mask(mask_input, has_mask_input),
        )
        return self.upscale(low_res, orig_im_size), iou_predictions, low_res


def example_decoder_inputs(sam: Sam, num_points: int = 3) -> dict[str, torch.Tensor]:
    """Decoder inputs of the right shapes and types (for tracing and for checks)."""
    embed_dim = sam.prompt_encoder.embed_dim
    grid_h, grid_w = sam.prompt_encoder.image_embedding_size
    mask_h, mask_w = sam.prompt_encoder.mask_input_size
    generator = torch.Generator().manual_seed(0)
    return {
        "image_embeddings": torch.randn(1, embed_dim, grid_h, grid_w, generator=generator),
        "point_coords": torch.rand(1, num_points, 2, generator=generator) * sam.img_size,
        "point_labels": torch.tensor([[1.0, 0.0, -1.0, 2.0, 3.0][:num_points]]),
        "mask_input": torch.randn(1, 1, mask_h, mask_w, generator=generator),
        "has_mask_input": torch.tensor([1.0]),
        "orig_im_size": torch.tensor([0.75 * sam.img_size, 1.0 * sam.img_size]).floor(),
    }


def _metadata(sam: Sam) -> dict[str, str]:
    grid_h, grid_w = sam.prompt_encoder.image_embedding_size
    return {
        interface.META_IMAGE_SIZE: str(sam.img_size),
        interface.META_EMBEDDING_SHAPE: f"{sam.prompt_encoder.embed_dim},{grid_h},{grid_w}",
        interface.META_MASK_THRESHOLD: str(float(sam.mask_threshold)),
    }


def _export(graph: nn.Module, inputs: dict[str, torch.Tensor], outputs: tuple[str, ...],
            dynamic_axes: dict[str, dict[int, str]], metadata: dict[str, str], path: Path) -> None:
    """Trace ``graph`` to ``path`` and stamp ``metadata`` into it (weights may go to a side file)."""
    with warnings.catch_warnings():
        # Tracing warns about shape arithmetic it records; the checks against PyTorch cover it.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph.eval(),
            tuple(inputs.values()),
            str(path),
            input_names=list(inputs),
            output_names=list(outputs),
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    model = onnx.load(str(path), load_external_data=False)
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))


@torch.no_grad()
def export_onnx(sam: Sam, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``encoder.onnx`` and ``decoder.onnx`` for ``sam`` into ``out_dir``.

    Both files appear only once both exports succeeded (they are written to a temporary
    folder beside ``out_dir`` and moved in), so an interrupted export leaves nothing
    half-written. Encoders over 2 GB (vit_h) keep their weights in a side file next to
    ``encoder.onnx``, as ONNX requires.
    """
    sam = sam.float().cpu().eval()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out must be a folder, got the file {out_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    metadata = _metadata(sam)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir))
    try:
        image = torch.rand(1, 3, sam.img_size, int(sam.img_size * 0.75)) * 255
        _export(EncoderGraph(sam), {"image": image}, interface.ENCODER_OUTPUTS,
                {"image": {2: "height", 3: "width"}}, metadata, staging / interface.ENCODER_FILE)
        _export(DecoderGraph(sam), example_decoder_inputs(sam), interface.DECODER_OUTPUTS,
                {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"},
                 "masks": {2: "height", 3: "width"}},
                metadata, staging / interface.DECODER_FILE)
        written = {}
        for part in sorted(staging.iterdir()):
            os.replace(part, out_dir / part.name)
            written[part.name] = out_dir / part.name
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"encoder": written[interface.ENCODER_FILE], "decoder": written[interface.DECODER_FILE]}


@torch.no_grad()
def compare_with_torch(sam: Sam, out_dir: str | os.PathLike) -> dict[str, float]:
    """Largest absolute difference between onnxruntime and PyTorch, per output, on random inputs
    (a non-square image, five prompt points of every label, a mask input)."""
    import onnxruntime

    sam = sam.float().cpu().eval()
    out_dir = Path(out_dir)

    def run(file: str, inputs: dict[str, torch.Tensor]) -> list[np.ndarray]:
        session = onnxruntime.InferenceSession(str(out_dir / file), providers=["CPUExecutionProvider"])
        return session.run(None, {name: tensor.numpy() for name, tensor in inputs.items()})

    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, int(sam.img_size * 0.6), sam.img_size, generator=generator) * 255
    embedding = EncoderGraph(sam)(image)
    (onnx_embedding,) = run(interface.ENCODER_FILE, {"image": image})
    differences = {"image_embeddings": float(np.abs(onnx_embedding - embedding.numpy()).max())}
    inputs = example_decoder_inputs(sam, num_points=5)
    inputs["image_embeddings"] = embedding
    expected = DecoderGraph(sam)(**inputs)
    for name, want, got in zip(interface.DECODER_OUTPUTS, expected, run(interface.DECODER_FILE, inputs)):
        differences[name] = float(np.abs(got - want.numpy()).max())
    return differences
