"""Fast modes for the image encoder, chosen by the caller: precision, quantisation, compilation.

The encoder is where almost all of SAM's time goes (one ViT pass per image), so every mode
changes the encoder only; the prompt encoder and mask decoder stay float32, which keeps mask
logits close to the exact path for the price of a few milliseconds per prompt.
``SamPredictor`` feeds the encoder in the dtype of its weights and reads the embedding back
as float32, so a model changed here works with the predictor and the automatic generator as is.

Modes (join several with "+", e.g. "bf16+compile"):

- ``exact``: float32, the reference path.
- ``bf16``: encoder weights and activations in bfloat16 (GPUs; CPUs with AVX512-BF16 or AMX).
- ``fp16``: encoder in float16 (GPUs only: CPUs lack fast float16 kernels).
- ``int8``: dynamic int8 quantisation of the encoder's linear layers (CPU only): weights
  stored as int8, activations quantised per batch on the fly.
- ``compile``: ``torch.compile`` of the encoder (fuses element-wise work; first call is slow).
"""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
import torch
from torch import nn

from segany.modeling import Sam
from segany.transforms import ResizeLongestSide

MODES = ("exact", "bf16", "fp16", "int8", "compile")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def parse_mode(mode: str, device: torch.device | str) -> list[str]:
    """Split "a+b" into modes and check that they fit each other and ``device``."""
    parts = [part.strip() for part in mode.split("+") if part.strip()]
    unknown = [part for part in parts if part not in MODES]
    if not parts or unknown:
        raise ValueError(f"unknown speed mode {mode!r}; expected one of {', '.join(MODES)}, joined with '+'")
    device_type = torch.device(device).type
    if "exact" in parts and len(parts) > 1:
        raise ValueError(f"mode 'exact' cannot be combined with others, got {mode!r}")
    if sum(part in ("bf16", "fp16", "int8") for part in parts) > 1:
        raise ValueError(f"choose at most one of bf16, fp16, int8; got {mode!r}")
    if "fp16" in parts and device_type == "cpu":
        raise ValueError("mode 'fp16' needs a GPU; on CPU use 'bf16' or 'int8'")
    if "int8" in parts and device_type != "cpu":
        raise ValueError(f"mode 'int8' (dynamic quantisation) runs on CPU only, the model is on {device_type}")
    return parts


def accelerate(model: Sam, mode: str = "exact") -> Sam:
    """Apply ``mode`` to ``model``'s image encoder, in place, and return the model.

    Modes change numbers (except ``exact`` and ``compile``): measure their effect on your
    data with ``benches/bench_modes.py`` (mean mask IoU against ``exact``).
    """
    parts = parse_mode(mode, model.device)
    encoder = model.image_encoder
    for part in parts:
        if part in DTYPES:
            encoder.to(DTYPES[part])
        elif part == "int8":
            quantize_linear_layers(encoder)
        elif part == "compile":
            encoder.compile()
    model.speed_mode = "+".join(parts)
    return model


def quantize_linear_layers(module: nn.Module) -> nn.Module:
    """Replace every ``nn.Linear`` in ``module`` by a dynamically quantised int8 one, in place."""
    from torch.ao.quantization import quantize_dynamic

    return quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8, inplace=True)


def encoder_dtype(model: Sam) -> torch.dtype:
    """The dtype the encoder's input should have (float32 unless a bf16/fp16 mode was applied)."""
    return next(model.image_encoder.parameters()).dtype


@torch.inference_mode()
def embed_images(
    model: Sam, images: Iterable[np.ndarray], batch_size: int = 8
) -> Iterator[tuple[torch.Tensor, tuple[int, int], tuple[int, int]]]:
    """Embed RGB uint8 images ``batch_size`` at a time: yields (1xCxhxw float32 embedding,
    original size, input size) per image, in order, for ``SamPredictor.set_image_embedding``.

    Batches keep a GPU busy (one encoder call per batch instead of per image); on a CPU a
    batch of 1 is as fast per image.
    """
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    transform = ResizeLongestSide(model.img_size)
    batch: list[tuple[torch.Tensor, tuple[int, int], tuple[int, int]]] = []

    def flush() -> Iterator[tuple[torch.Tensor, tuple[int, int], tuple[int, int]]]:
        pixels = torch.stack([model.preprocess(image) for image, _, _ in batch]).to(encoder_dtype(model))
        embeddings = model.image_encoder(pixels).float()
        for embedding, (_, original_size, input_size) in zip(embeddings, batch):
            yield embedding[None], original_size, input_size
        batch.clear()

    for image in images:
        resized = transform.apply_image(np.ascontiguousarray(image))
        tensor = torch.as_tensor(resized, device=model.device).permute(2, 0, 1).float()
        batch.append((tensor, image.shape[:2], resized.shape[:2]))
        if len(batch) == batch_size:
            yield from flush()
    if batch:
        yield from flush()
