"""Procedural training scenes with exact masks, for a model trained without SA-1B.

Each scene is a real photograph (background) with objects layered on top, later ones
occluding earlier ones: real objects cut out of photos with their ground-truth masks, and
procedural shapes (ellipses, polygons, organic blobs) textured with photo crops, gradients
or patterns. Some shapes carry a nested part, so that one click has several valid answers
(part and whole), the ambiguity SAM's three outputs exist for. Scenes are a pure function
of (seed, index): the same configuration always yields the same data.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from segany.io import read_image


@dataclass(frozen=True)
class CutoutSource:
    """A real object: a photo and the binary mask of the object in it."""

    image_path: Path
    mask_path: Path


@lru_cache(maxsize=512)
def _photo(path: Path) -> np.ndarray:
    return read_image(path)


@lru_cache(maxsize=512)
def _cutout(source: CutoutSource) -> tuple[np.ndarray, np.ndarray]:
    """The object's pixels and mask, cropped to the mask's bounding box."""
    image = _photo(source.image_path)
    mask = cv2.imread(str(source.mask_path), cv2.IMREAD_GRAYSCALE)
    if mask is None or mask.shape != image.shape[:2]:
        raise ValueError(f"mask {source.mask_path} is unreadable or does not match {source.image_path}")
    mask = mask > 127
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise ValueError(f"mask {source.mask_path} is empty")
    crop = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    return image[crop], mask[crop]


class SceneGenerator:
    """Deterministic scenes: ``scene(i)`` -> (RGB uint8 size x size image, list of bool masks)."""

    def __init__(
        self,
        photos: list[Path],
        cutouts: list[CutoutSource],
        size: int = 512,
        seed: int = 0,
        objects: tuple[int, int] = (3, 9),
        part_probability: float = 0.35,
        min_area_fraction: float = 0.002,
    ) -> None:
        if not photos:
            raise ValueError("the scene generator needs at least one photo for backgrounds and textures")
        self.photos = sorted(photos)
        self.cutouts = sorted(cutouts, key=lambda c: str(c.image_path))
        self.size = size
        self.seed = seed
        self.objects = objects
        self.part_probability = part_probability
        self.min_area = int(min_area_fraction * size * size)

    def scene(self, index: int) -> tuple[np.ndarray, list[np.ndarray]]:
        rng = np.random.default_rng([self.seed, index])
        canvas = self._photo_crop(rng, self.size, self.size).astype(np.float32)
        layers: list[list[np.ndarray]] = []  # per object: [whole, optional part]
        for _ in range(rng.integers(self.objects[0], self.objects[1] + 1)):
            use_cutout = self.cutouts and rng.random() < 0.5
            texture, masks = self._cutout_object(rng) if use_cutout else self._shape_object(rng)
            placed = self._place(rng, canvas, texture, masks)
            if placed is not None:
                layers.append(placed)
        return canvas.clip(0, 255).astype(np.uint8), self._visible_masks(layers)

    # -- objects ---------------------------------------------------------------------------

    def _cutout_object(self, rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray]]:
        pixels, mask = _cutout(self.cutouts[rng.integers(len(self.cutouts))])
        longest = rng.uniform(0.2, 0.75) * self.size
        scale = longest / max(mask.shape)
        new_size = (max(4, round(mask.shape[1] * scale)), max(4, round(mask.shape[0] * scale)))
        pixels = cv2.resize(pixels, new_size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        mask = cv2.resize(mask.astype(np.uint8), new_size, interpolation=cv2.INTER_NEAREST).astype(bool)
        if rng.random() < 0.5:
            pixels, mask = pixels[:, ::-1], mask[:, ::-1]
        return pixels.astype(np.float32), [mask]

    def _shape_object(self, rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray]]:
        height = int(rng.uniform(0.12, 0.6) * self.size)
        width = int(np.clip(height * rng.uniform(0.5, 2.0), 12, self.size * 0.8))
        mask = self._random_shape(rng, height, width)
        texture = self._texture(rng, height, width)
        masks = [mask]
        if rng.random() < self.part_probability:
            part = self._part(rng, mask)
            if part is not None:
                part_texture = self._texture(rng, height, width)
                texture = np.where(part[..., None], part_texture, texture)
                masks.append(part)
        return texture, masks

    def _random_shape(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        mask = np.zeros((height, width), np.uint8)
        kind = rng.integers(4)
        centre = (width // 2, height // 2)
        if kind == 0:  # ellipse
            cv2.ellipse(mask, centre, (width // 2 - 1, height // 2 - 1), 0, 0, 360, 1, -1)
        elif kind == 1:  # polygon, convex or star-like
            count = rng.integers(3, 9)
            angles = np.sort(rng.uniform(0, 2 * np.pi, count))
            radii = rng.uniform(0.45 if rng.random() < 0.5 else 0.95, 1.0, count)
            xs = centre[0] + radii * np.cos(angles) * (width / 2 - 1)
            ys = centre[1] + radii * np.sin(angles) * (height / 2 - 1)
            cv2.fillPoly(mask, [np.stack([xs, ys], 1).astype(np.int32)], 1)
        elif kind == 2:  # organic blob: smoothed noise, largest component
            noise = cv2.GaussianBlur(rng.random((height, width)).astype(np.float32), (0, 0), max(height, width) / 8)
            window = cv2.ellipse(np.zeros_like(mask), centre, (width // 2 - 1, height // 2 - 1), 0, 0, 360, 1, -1)
            blob = (noise > np.median(noise[window > 0])) & (window > 0)
            count, labels, stats, _ = cv2.connectedComponentsWithStats(blob.astype(np.uint8))
            if count > 1:
                mask = (labels == 1 + np.argmax(stats[1:, cv2.CC_STAT_AREA])).astype(np.uint8)
        else:  # rounded rectangle
            radius = int(min(height, width) * rng.uniform(0.05, 0.3))
            cv2.rectangle(mask, (radius, 0), (width - 1 - radius, height - 1), 1, -1)
            cv2.rectangle(mask, (0, radius), (width - 1, height - 1 - radius), 1, -1)
            for cx, cy in ((radius, radius), (width - 1 - radius, radius), (radius, height - 1 - radius),
                           (width - 1 - radius, height - 1 - radius)):
                cv2.circle(mask, (cx, cy), radius, 1, -1)
        return mask.astype(bool)

    def _part(self, rng: np.random.Generator, whole: np.ndarray) -> np.ndarray | None:
        """A smaller shape inside ``whole`` (a nested, separately textured region)."""
        ys, xs = np.nonzero(whole)
        if len(xs) < 200:
            return None
        height = max(6, int((ys.max() - ys.min()) * rng.uniform(0.25, 0.5)))
        width = max(6, int((xs.max() - xs.min()) * rng.uniform(0.25, 0.5)))
        shape = self._random_shape(rng, height, width)
        pick = rng.integers(len(xs))
        top = int(np.clip(ys[pick] - height // 2, 0, whole.shape[0] - height))
        left = int(np.clip(xs[pick] - width // 2, 0, whole.shape[1] - width))
        part = np.zeros_like(whole)
        part[top : top + height, left : left + width] = shape
        part &= whole
        return part if part.sum() >= 0.05 * whole.sum() and part.sum() < 0.8 * whole.sum() else None

    def _texture(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        kind = rng.integers(3)
        if kind == 0:
            texture = self._photo_crop(rng, height, width).astype(np.float32)
        elif kind == 1:  # colour with a gradient and grain
            colour = rng.uniform(0, 255, 3)
            ramp = np.linspace(-1, 1, width)[None, :, None] * rng.uniform(-60, 60, 3)
            texture = colour + ramp + rng.normal(0, rng.uniform(2, 15), (height, width, 3))
        else:  # stripes or checks in two colours
            a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
            yy, xx = np.mgrid[0:height, 0:width]
            angle, period = rng.uniform(0, np.pi), rng.uniform(4, 24)
            phase = (xx * np.cos(angle) + yy * np.sin(angle)) / period
            pattern = (np.floor(phase) % 2) if rng.random() < 0.5 else (np.floor(xx / period) + np.floor(yy / period)) % 2
            texture = np.where(pattern[..., None] > 0, a, b)
        shade = 1 + np.linspace(-1, 1, height)[:, None, None] * rng.uniform(-0.25, 0.25)
        return np.asarray(texture * shade, dtype=np.float32)

    def _photo_crop(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        photo = _photo(self.photos[rng.integers(len(self.photos))])
        scale = max(height / photo.shape[0], width / photo.shape[1]) * rng.uniform(1.0, 1.6)
        resized = cv2.resize(photo, (max(width, round(photo.shape[1] * scale)), max(height, round(photo.shape[0] * scale))))
        top = rng.integers(resized.shape[0] - height + 1)
        left = rng.integers(resized.shape[1] - width + 1)
        crop = resized[top : top + height, left : left + width]
        return crop[:, ::-1] if rng.random() < 0.5 else crop

    # -- composition -----------------------------------------------------------------------

    def _place(
        self, rng: np.random.Generator, canvas: np.ndarray, texture: np.ndarray, masks: list[np.ndarray]
    ) -> list[np.ndarray] | None:
        """Paste an object at a random position (possibly cut by the border); return its full-canvas masks."""
        height, width = masks[0].shape
        top = int(rng.integers(-height // 4, self.size - 3 * height // 4))
        left = int(rng.integers(-width // 4, self.size - 3 * width // 4))
        y0, x0 = max(top, 0), max(left, 0)
        y1, x1 = min(top + height, self.size), min(left + width, self.size)
        if y1 - y0 < 4 or x1 - x0 < 4:
            return None
        local = (slice(y0 - top, y1 - top), slice(x0 - left, x1 - left))
        alpha = cv2.GaussianBlur(masks[0][local].astype(np.float32), (0, 0), 0.7)[..., None]
        region = canvas[y0:y1, x0:x1]
        region[:] = alpha * texture[local] + (1 - alpha) * region
        placed = []
        for mask in masks:
            full = np.zeros((self.size, self.size), bool)
            full[y0:y1, x0:x1] = mask[local]
            placed.append(full)
        return placed

    def _visible_masks(self, layers: list[list[np.ndarray]]) -> list[np.ndarray]:
        """Masks minus what later objects cover; drop those left too small or mostly hidden."""
        visible, covered = [], np.zeros((self.size, self.size), bool)
        for group in reversed(layers):
            for mask in group:
                shown = mask & ~covered
                if shown.sum() >= max(self.min_area, 0.3 * mask.sum()):
                    visible.append(shown)
            covered |= group[0]
        return visible[::-1]


def coco_mval_sources(root: Path) -> tuple[list[Path], list[CutoutSource]]:
    """Photos and object cut-outs of a COCO-MVal-layout folder (``img/NAME.jpg`` + ``gt/NAME.png``)."""
    images = sorted((root / "img").glob("*.jpg"))
    if not images:
        raise FileNotFoundError(f"no images under {root / 'img'} (expected the COCO-MVal layout img/ + gt/)")
    cutouts = [CutoutSource(path, root / "gt" / f"{path.stem}.png") for path in images
               if (root / "gt" / f"{path.stem}.png").exists()]
    return images, cutouts
