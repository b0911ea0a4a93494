"""Reading images into the one format the model takes: RGB ``uint8`` arrays of shape HxWx3.

Photos arrive rotated by EXIF, as grayscale, with alpha, as 16-bit scans or as palette
PNGs; every entry point funnels them through :func:`read_image` so that the rest of
segany only ever sees RGB uint8.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as RGB uint8 (HxWx3), upright according to its EXIF orientation."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image not found: {path}")
    if path.is_dir():
        raise IsADirectoryError(f"expected an image file, got a folder: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
            return to_rgb_uint8(image)
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"cannot read image {path}: not a supported image or the file is corrupt ({error})") from None


def to_rgb_uint8(image: Image.Image) -> np.ndarray:
    """Convert any PIL image mode (L, LA, P, RGBA, CMYK, I;16, I, F) to an RGB uint8 array."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if values.max(initial=0) > 255 else 255.0
        if image.mode == "F" and values.max(initial=0) <= 1.0:
            top = 1.0
        gray = np.clip(np.round(values * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))


def check_image_array(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Validate an in-memory image: HxWx3 uint8, non-empty. Returns it unchanged."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{name} must be a numpy array of shape HxWx3, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name} must have shape HxWx3, got {tuple(image.shape)}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(image.shape)})")
    if image.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 (0..255), got dtype {image.dtype}")
    return image


def list_images(inputs: list[str | os.PathLike]) -> list[Path]:
    """Expand files and folders (recursively) into a sorted, de-duplicated list of image paths."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found.extend(p for p in sorted(path.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif path.exists():
            found.append(path)
        else:
            raise FileNotFoundError(f"input not found: {path}")
    unique = list(dict.fromkeys(p.resolve() for p in found))
    return unique


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator:
    """Open a temporary file beside ``path`` and move it into place only if writing succeeds.

    Readers never see a half-written file, and an interrupted job leaves nothing behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(handle, mode) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def save_image_atomic(image: np.ndarray, path: str | os.PathLike) -> None:
    """Save an array (HxW bool/uint8 or HxWx3 uint8) as an image, atomically; format from the suffix."""
    path = Path(path)
    array = image.astype(np.uint8) * 255 if image.dtype == bool else image
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot tell the image format from the file name {path}")
    with atomic_write(path) as stream:
        Image.fromarray(array).save(stream, format=fmt)
