"""CLIP embeddings as prompts: image crops and strings mapped into one aligned space.

The SAM paper's text-to-mask model (section 7.5, appendix D.5) is trained with the CLIP
image embedding of the crop around each mask as the prompt, and used with the CLIP text
embedding of a phrase: CLIP aligns the two, so the model needs no text in training. This
module holds what both sides share: the small interface an embedder offers, its open_clip
implementation (weights from a local file only, never downloaded), the crop around a
mask, and crop embeddings through an on-disk cache.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch

from segany.embedding_cache import EmbeddingCache, image_fingerprint

BATCH = 64  # crops or strings per forward pass of the embedder
HF_CONFIG_KEYS = ("hf_model_name", "hf_tokenizer_name")


class MissingDependencyError(ImportError, ValueError):
    """An optional package is not installed. A ValueError too, so the CLI reports it in one line."""


class PromptEmbedder(Protocol):
    """Maps image crops and strings into one embedding space in which they are aligned."""

    embed_dim: int
    fingerprint: str  # identifies the weights, so that cached embeddings of different models never mix

    def embed_images(self, crops: Sequence[np.ndarray]) -> torch.Tensor:
        """N crops (h x w x 3 uint8 RGB) to N x embed_dim."""
        ...

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """N strings to N x embed_dim."""
        ...


def mask_crop(image: np.ndarray, mask: np.ndarray, expand: float) -> np.ndarray:
    """The square centred on ``mask``'s bounding box, ``expand`` times its longer side.

    Square and centred because CLIP's preprocessing centre-crops to a square: the object
    stays whole and in the middle. What falls outside the image is black. ``expand`` > 1
    keeps some context, as a person naming the object sees it.
    """
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        raise ValueError("mask_crop: the mask is empty")
    top, left = rows.min(), cols.min()
    box_height, box_width = rows.max() + 1 - top, cols.max() + 1 - left
    side = max(1, int(round(max(box_height, box_width) * expand)))
    y0, x0 = top + (box_height - side) // 2, left + (box_width - side) // 2
    crop = np.zeros((side, side, image.shape[2]), dtype=image.dtype)
    height, width = mask.shape
    src_y, src_x = slice(max(y0, 0), min(y0 + side, height)), slice(max(x0, 0), min(x0 + side, width))
    crop[src_y.start - y0 : src_y.stop - y0, src_x.start - x0 : src_x.stop - x0] = image[src_y, src_x]
    return crop


def embed_crops(embedder: PromptEmbedder, crops: Sequence[np.ndarray], cache: EmbeddingCache | None) -> torch.Tensor:
    """``embedder.embed_images(crops)`` (N x D, float32, CPU), reading and filling ``cache`` when given."""
    if len(crops) == 0:
        return torch.zeros(0, embedder.embed_dim)
    if cache is None:
        return embedder.embed_images(crops).float().cpu()
    keys = [image_fingerprint(crop) for crop in crops]
    found = [cache.get(embedder.fingerprint, key) for key in keys]
    missing = [index for index, entry in enumerate(found) if entry is None]
    if missing:
        computed = embedder.embed_images([crops[index] for index in missing]).float().cpu()
        for index, embedding in zip(missing, computed):
            found[index] = {"embedding": embedding}
            cache.put(embedder.fingerprint, keys[index], found[index])
    return torch.stack([entry["embedding"] for entry in found])


def _file_digest(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=10)
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _import_open_clip():
    try:
        import open_clip
    except ImportError as error:
        raise MissingDependencyError(
            "CLIP text prompts need the package 'open-clip-torch' (pip install 'segany[text]')"
        ) from error
    return open_clip


class OpenClipEmbedder:
    """A CLIP model from open_clip: an architecture name and a local weights file, never a download.

    ``model_name`` is an open_clip architecture (``open_clip.list_models()``, e.g. "ViT-B-32",
    or the paper's "ViT-L-14-336"); ``checkpoint`` is that architecture's weights as a file
    on this machine (e.g. ``open_clip_pytorch_model.bin`` from a CLIP release).
    """

    def __init__(self, model_name: str, checkpoint: str | os.PathLike | None, device: str | torch.device = "cpu") -> None:
        if checkpoint is None or str(checkpoint) == "":
            raise ValueError(
                "no CLIP weights given: pass the path of a local open_clip checkpoint file "
                f"for '{model_name}' (segany never downloads weights)"
            )
        path = Path(checkpoint).expanduser().resolve()  # absolute, so open_clip never reads it as a tag to download
        if not path.exists():
            raise FileNotFoundError(f"CLIP weights not found: {checkpoint}")
        if not path.is_file():
            raise ValueError(f"CLIP weights must be a checkpoint file, got a folder: {checkpoint}")
        open_clip = _import_open_clip()
        architecture = open_clip.get_model_config(model_name) if ":" not in model_name else None
        if architecture is None:
            raise ValueError(
                f"unknown open_clip architecture '{model_name}'; expected a built-in name such as "
                "ViT-B-32 or ViT-L-14-336 (see open_clip.list_models())"
            )
        if any(key in architecture.get("text_cfg", {}) for key in HF_CONFIG_KEYS):
            raise ValueError(
                f"open_clip architecture '{model_name}' takes its text tower or tokenizer from the "
                "Hugging Face hub, which segany does not download from; choose a CLIP architecture "
                "with open_clip's own text tower (e.g. ViT-B-32, ViT-L-14-336)"
            )
        try:
            model, _, self.preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=str(path), device=device
            )
        except Exception as error:  # open_clip raises RuntimeError/KeyError/pickle errors for foreign files
            raise ValueError(f"cannot load CLIP weights {checkpoint} as '{model_name}': {error}") from None
        self.model = model.eval()
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.device = torch.device(device)
        self.embed_dim = int(architecture["embed_dim"])
        self.fingerprint = f"{model_name}-{_file_digest(path)}"

    @torch.inference_mode()
    def embed_images(self, crops: Sequence[np.ndarray]) -> torch.Tensor:
        from PIL import Image

        parts = []
        for start in range(0, len(crops), BATCH):
            pixels = torch.stack([self.preprocess(Image.fromarray(crop)) for crop in crops[start : start + BATCH]])
            parts.append(self.model.encode_image(pixels.to(self.device)).float())
        return torch.cat(parts)

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        parts = []
        for start in range(0, len(texts), BATCH):
            tokens = self.tokenizer(list(texts[start : start + BATCH]))
            parts.append(self.model.encode_text(tokens.to(self.device)).float())
        return torch.cat(parts)
