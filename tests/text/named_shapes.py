"""The text-prompt pathway learns: a stand-in for CLIP on procedurally drawn scenes of named shapes.

Each scene holds three shapes with distinct names ("red circle", "blue triangle", ...) on
a noisy background. The stand-in embedder is aligned by construction: a string maps to a
fixed random unit vector per name, and an image crop maps to the vector of the name of the
shape at its centre (recognised from the pixels), plus per-crop noise standing in for the
gap between CLIP's image and text embeddings. A tiny SAM trained with crop-embedding first
prompts only (segany's Trainer, text.probability 1) is then prompted with text embeddings
alone on new scenes; the control gives each object the text of another object in the same
scene. Run directly to print the figures quoted in docs/text_prompts.md:

    OMP_NUM_THREADS=1 .venv/bin/python tests/text/named_shapes.py
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch

COLOURS = {"red": (220, 40, 40), "green": (40, 190, 70), "blue": (50, 80, 230)}
SHAPES = ("circle", "square", "triangle")
NAMES = tuple(f"{colour} {shape}" for colour, shape in itertools.product(COLOURS, SHAPES))
SIZE = 128  # scene side, pixels
CROP_EXPAND = 1.5
COLOUR_TOLERANCE = 30  # max per-channel distance of a shape's pixels from its palette colour


@dataclass
class Scene:
    image: np.ndarray  # SIZE x SIZE x 3 uint8
    masks: list[np.ndarray]  # one SIZE x SIZE bool per shape
    names: list[str]


def draw_shape(canvas: np.ndarray, shape: str, centre: tuple[int, int], radius: int, value) -> None:
    x, y = centre
    if shape == "circle":
        cv2.circle(canvas, centre, radius, value, -1)
    elif shape == "square":
        cv2.rectangle(canvas, (x - radius, y - radius), (x + radius, y + radius), value, -1)
    else:
        corners = np.array([[x, y - radius], [x - radius, y + radius], [x + radius, y + radius]], np.int32)
        cv2.fillPoly(canvas, [corners], value)


def make_scene(seed: int, objects: int = 3) -> Scene:
    """``objects`` non-touching shapes of distinct names on a grey noise background."""
    rng = np.random.default_rng(seed)
    image = rng.integers(90, 150, (SIZE, SIZE, 3)).astype(np.uint8)
    names = [NAMES[i] for i in rng.choice(len(NAMES), objects, replace=False)]
    taken = np.zeros((SIZE, SIZE), np.uint8)
    masks = []
    for name in names:
        colour, shape = name.split()
        for _ in range(200):
            radius = int(rng.integers(11, 19))
            centre = (int(rng.integers(radius + 2, SIZE - radius - 2)), int(rng.integers(radius + 2, SIZE - radius - 2)))
            mask = np.zeros((SIZE, SIZE), np.uint8)
            draw_shape(mask, shape, centre, radius, 1)
            if not (cv2.dilate(mask, np.ones((7, 7), np.uint8)) & taken).any():
                break
        else:
            raise RuntimeError(f"scene {seed}: no room for {name}")
        taken |= mask
        image[mask.astype(bool)] = COLOURS[colour]
        masks.append(mask.astype(bool))
    return Scene(image, masks, names)


def recognise(crop: np.ndarray) -> str | None:
    """The name of the shape at the centre of ``crop``: palette colour, then fill of its bounding box."""
    centre = crop[crop.shape[0] // 2, crop.shape[1] // 2].astype(int)
    colour = min(COLOURS, key=lambda name: np.abs(centre - COLOURS[name]).max())
    if np.abs(centre - COLOURS[colour]).max() > COLOUR_TOLERANCE:
        return None
    region = (np.abs(crop.astype(int) - COLOURS[colour]).max(axis=2) <= COLOUR_TOLERANCE).astype(np.uint8)
    _, labels = cv2.connectedComponents(region)
    component = labels == labels[crop.shape[0] // 2, crop.shape[1] // 2]
    rows, cols = np.nonzero(component)
    fill = component.sum() / ((rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1))
    shape = "square" if fill > 0.9 else "circle" if fill > 0.65 else "triangle"
    return f"{colour} {shape}"


class NamedShapeEmbedder:
    """Aligned by construction: "red circle" and a crop centred on a red circle share a direction."""

    fingerprint = "named-shapes-standin-v1"

    def __init__(self, embed_dim: int = 32, image_noise: float = 0.5, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.embed_dim = embed_dim
        self.image_noise = image_noise
        self.directions = {name: torch.nn.functional.normalize(torch.randn(embed_dim, generator=generator), dim=0)
                           for name in NAMES}
        self.recognised: list[str | None] = []  # what each embedded crop was read as (for checks)

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return torch.stack([self.directions[text] for text in texts])

    def embed_images(self, crops: Sequence[np.ndarray]) -> torch.Tensor:
        vectors = []
        for crop in crops:
            name = recognise(crop)
            self.recognised.append(name)
            seed = int.from_bytes(hashlib.blake2b(crop.tobytes(), digest_size=8).digest(), "little")
            noise = torch.randn(self.embed_dim, generator=torch.Generator().manual_seed(seed)) / self.embed_dim**0.5
            base = self.directions[name] if name is not None else torch.zeros(self.embed_dim)
            vectors.append(base + self.image_noise * noise)
        return torch.stack(vectors)


def experiment_config(steps: int):
    """A tiny SAM at 128 px, trained on crop-embedding first prompts only, one round per object."""
    from segany.train.config import config_from_dict

    return config_from_dict({
        "model": {"type": "tiny", "drop_path_rate": 0.0,
                  "overrides": {"prompt_embed_dim": 32, "decoder_num_heads": 2, "decoder_mlp_dim": 64, "iou_head_hidden_dim": 32,
                                "mask_in_chans": 8, "image_size": SIZE, "patch_size": 8, "window_size": 4}},
        "data": {"workers": 0, "masks_per_image": 3},
        "prompts": {"rounds": 1},
        "loss": {"focal_weight": 2.0},
        "text": {"probability": 1.0, "crop_expand": CROP_EXPAND},
        "optim": {"lr": 1e-3, "warmup_steps": 20, "decay_steps": [int(steps * 0.8)], "layer_decay": 1.0,
                  "weight_decay": 0.01},
        "steps": steps, "batch_size": 4, "device": "cpu", "log_every": max(1, steps // 10),
        "checkpoint_every": steps, "keep_checkpoints": 1,
    })


def text_miou(model, embedder: NamedShapeEmbedder, scenes: list[Scene], shuffled: bool) -> float:
    """Mean IoU of each object's best-scored mask when prompted by its own (or, shuffled, another's) name."""
    from segany import SamPredictor

    predictor = SamPredictor(model, text_encoder=embedder)
    ious = []
    for scene in scenes:
        predictor.set_image(scene.image)
        for index, mask in enumerate(scene.masks):
            name = scene.names[(index + 1) % len(scene.names)] if shuffled else scene.names[index]
            masks, scores, _ = predictor.predict(text=name)
            best = masks[int(np.argmax(scores))]
            ious.append((best & mask).sum() / max((best | mask).sum(), 1))
    return float(np.mean(ious))


def run_experiment(run_dir: Path, steps: int = 300, train_scenes: int = 200, test_scenes: int = 30) -> dict:
    """Train, then measure text-prompt mIoU against the shuffled-text control on unseen scenes."""
    from segany import build_sam
    from segany.train.loop import train

    torch.manual_seed(0)
    embedder = NamedShapeEmbedder()
    training = [make_scene(seed) for seed in range(train_scenes)]
    start = time.perf_counter()
    weights = train(experiment_config(steps), run_dir, dataset=training, text_encoder=embedder)
    seconds = time.perf_counter() - start
    recognised = [name is not None for name in embedder.recognised]
    model = build_sam("auto", checkpoint=weights)
    held_out = [make_scene(10_000 + seed) for seed in range(test_scenes)]
    return {
        "steps": steps,
        "train_seconds": round(seconds, 1),
        "crops_embedded": len(recognised),
        "crops_recognised": float(np.mean(recognised)),
        "cached_crops": len(list((run_dir / "text_embeddings").rglob("*.safetensors"))),
        "miou_text": round(text_miou(model, embedder, held_out, shuffled=False), 3),
        "miou_shuffled_text": round(text_miou(model, embedder, held_out, shuffled=True), 3),
        "test_objects": sum(len(scene.masks) for scene in held_out),
    }


if __name__ == "__main__":
    torch.set_num_threads(1)
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    with tempfile.TemporaryDirectory() as folder:
        print(json.dumps(run_experiment(Path(folder), steps=steps), indent=2))
