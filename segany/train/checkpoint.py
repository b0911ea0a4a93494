"""Training checkpoints: ``RUN_DIR/checkpoints/step_N.pt``, everything a run needs to go on exactly.

A checkpoint holds the model, optimiser, learning-rate schedule, loss scaler, the step
reached (which fixes the data position, see :mod:`segany.train.data`) and every process's
random-number state (drop path draws from it). It is a plain dict of tensors and numbers,
readable with ``torch.load(weights_only=True)``, and ``build_sam("auto", checkpoint=...)``
takes its weights.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from segany.io import atomic_write

_NAME = re.compile(r"step_(\d+)\.pt")


def checkpoint_path(run_dir: str | os.PathLike, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step}.pt"


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of the run's checkpoints, oldest first."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(match.group(1)), path) for path in folder.iterdir() if (match := _NAME.fullmatch(path.name))]
    return sorted(found)


def save_checkpoint(path: Path, state: dict[str, Any], keep: int) -> None:
    """Write ``state`` atomically, then delete all but the ``keep`` newest checkpoints beside it."""
    with atomic_write(path) as stream:
        torch.save(state, stream)
    for _, old in list_checkpoints(path.parent.parent)[:-keep]:
        old.unlink(missing_ok=True)


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated or foreign file
        raise ValueError(f"cannot read training checkpoint {path}: {error}") from None


def rng_state() -> dict[str, Any]:
    """This process's torch random states (CPU and, when used, every GPU)."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
