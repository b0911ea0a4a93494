"""On-disk cache of image embeddings, keyed by image content and model weights.

The encoder is ~99% of the cost of segmenting an image; evaluations, the annotation app and
decoder fine-tuning revisit the same images with the same weights, so they look here first.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save

from segany.io import atomic_write


def model_fingerprint(model: torch.nn.Module) -> str:
    """A short digest of the image encoder's weights (what an embedding depends on)."""
    digest = hashlib.blake2b(digest_size=10)
    for name, tensor in sorted(model.image_encoder.state_dict().items()):
        digest.update(name.encode())
        # reshape: 0-d buffers (BatchNorm's num_batches_tracked) cannot be viewed as bytes
        digest.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def image_fingerprint(image: np.ndarray) -> str:
    """A short digest of an image's pixels and shape."""
    digest = hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=12)
    digest.update(str(image.shape).encode())
    return digest.hexdigest()


class EmbeddingCache:
    """Image embeddings as safetensors files under ``directory/<model>/<image>.safetensors``."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)

    def _path(self, model_key: str, image_key: str) -> Path:
        return self.directory / model_key / f"{image_key}.safetensors"

    def get(self, model_key: str, image_key: str) -> dict[str, torch.Tensor] | None:
        """The stored tensors, or None when absent or unreadable (a damaged entry is a miss)."""
        path = self._path(model_key, image_key)
        if not path.exists():
            return None
        try:
            return load_file(str(path))
        except Exception:  # a truncated or foreign file: recompute rather than fail
            path.unlink(missing_ok=True)
            return None

    def put(self, model_key: str, image_key: str, tensors: dict[str, torch.Tensor]) -> None:
        payload = save({name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()})
        with atomic_write(self._path(model_key, image_key)) as stream:
            stream.write(payload)


def set_image_cached(predictor, image: np.ndarray, cache: EmbeddingCache, model_key: str | None = None) -> bool:
    """``predictor.set_image(image)`` through ``cache``; returns True on a cache hit.

    Pass ``model_key`` (e.g. from :func:`model_fingerprint`, computed once) to avoid hashing
    the weights on every call.
    """
    model_key = model_key or model_fingerprint(predictor.model)
    image_key = image_fingerprint(image)
    stored = cache.get(model_key, image_key)
    if stored is not None:
        predictor.set_image_embedding(
            stored["features"], tuple(stored["original_size"].tolist()), tuple(stored["input_size"].tolist())
        )
        return True
    predictor.set_image(image)
    cache.put(
        model_key,
        image_key,
        {
            "features": predictor.features,
            "original_size": torch.tensor(predictor.original_size),
            "input_size": torch.tensor(predictor.input_size),
        },
    )
    return False
