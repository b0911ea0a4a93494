"""Training test helpers: a small in-memory dataset and a fast training configuration."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from segany.train.config import TrainConfig, config_from_dict


@dataclass
class Sample:
    """Stands in for ``segany.datasets.Sample``: what the training data module reads."""

    image: np.ndarray
    masks: list[np.ndarray]
    id: str = ""
    image_path: Path | None = None
    ignore: list = field(default_factory=list)


def synthetic_samples(count: int = 3, size: tuple[int, int] = (96, 128), seed: int = 0) -> list[Sample]:
    """Images of flat-coloured ellipses and rectangles on a noisy background, with exact masks."""
    rng = np.random.default_rng(seed)
    samples = []
    for index in range(count):
        height, width = size
        image = rng.integers(90, 140, (height, width, 3)).astype(np.uint8)
        masks = []
        for shape in range(2):
            mask = np.zeros((height, width), np.uint8)
            centre = (int(rng.integers(25, width - 25)), int(rng.integers(25, height - 25)))
            if shape == 0:
                cv2.ellipse(mask, centre, (int(rng.integers(12, 22)), int(rng.integers(10, 20))), 0, 0, 360, 1, -1)
            else:
                cv2.rectangle(mask, (centre[0] - 15, centre[1] - 12), (centre[0] + 15, centre[1] + 12), 1, -1)
            mask = mask.astype(bool) & ~np.any(masks, axis=0) if masks else mask.astype(bool)
            image[mask] = rng.integers(0, 256, 3)
            masks.append(mask)
        samples.append(Sample(image, masks, id=f"synthetic-{index}"))
    return samples


def fast_config(**changes) -> TrainConfig:
    """A tiny model and a short recipe that a 2-core CPU trains in seconds."""
    values = {
        "model": {"type": "tiny", "drop_path_rate": 0.0,
                  "overrides": {"prompt_embed_dim": 32, "decoder_mlp_dim": 64, "iou_head_hidden_dim": 32,
                                "mask_in_chans": 8, "image_size": 128, "patch_size": 8, "window_size": 4}},
        "data": {"workers": 0, "masks_per_image": 4},
        "prompts": {"rounds": 5},
        "optim": {"lr": 3e-3, "warmup_steps": 2, "decay_steps": [1000], "layer_decay": 0.9},
        "steps": 4, "batch_size": 2, "device": "cpu", "log_every": 1, "checkpoint_every": 2,
    }
    config = config_from_dict(values)
    for key, value in changes.items():
        target = config
        *sections, name = key.split("__")
        for section in sections:
            target = getattr(target, section)
        setattr(target, name, value)
    return config


def run_metrics(run: Path) -> list[dict]:
    """The records a training run wrote to its metrics.jsonl, in order."""
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def train_under_torchrun(run: Path, processes: int, device: str = "cpu", **env: str) -> subprocess.CompletedProcess:
    """``train(fast_config(device=device), run, synthetic_samples())`` in ``processes`` workers
    started by ``torch.distributed.run`` (extra environment variables in ``env``)."""
    script = run.parent / f"{run.name}_worker.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from train_samples import fast_config, synthetic_samples\n"
        "from segany.train.loop import train\n"
        f"train(fast_config(device={device!r}), {str(run)!r}, dataset=synthetic_samples())\n"
    )
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes), str(script)],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, **env), cwd=Path(__file__).resolve().parents[2],
    )
