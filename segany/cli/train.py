"""``segany train``: the SAM paper's training recipe, from scratch or fine-tuning, on one process or many.

Under ``torchrun`` (``python -m torch.distributed.run --nproc-per-node N -m segany train ...``)
every process runs this command and they share each step's batch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "train or fine-tune SAM with the paper's recipe (YAML config, simulated interactive prompts, resumable)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML recipe (default: the paper's values; see configs/)")
    parser.add_argument("--data", help="training data: SA-1B folder, COCO JSON, mask-PNG folder or annotation .sqlite "
                        "(sets data.path)")
    parser.add_argument("--out", type=Path, required=True, help="run directory for config, metrics, plot, checkpoints")
    parser.add_argument("--init", type=Path, help="start from these weights (official .pth or .safetensors); "
                        "the architecture is read from the file unless the config names model.type")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--device", help="cpu, cuda or auto (sets device)")
    parser.add_argument("--steps", type=int, help="total optimiser steps (sets steps)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config value, e.g. --set optim.lr=1e-4 --set model.freeze=[image_encoder]")


def overrides_from_args(args: argparse.Namespace) -> list[str]:
    """The ``--set`` overrides plus those the dedicated flags stand for (flags win)."""
    overrides = list(args.overrides)
    if args.data is not None:
        overrides += [f"data.path={args.data}", "data.sources=[]"]
    if args.init is not None:
        if not args.init.is_file():
            raise FileNotFoundError(f"--init checkpoint not found: {args.init}")
        overrides.append(f"model.init={args.init}")
        if not _names_model_type(args.config, overrides):
            overrides.append("model.type=auto")
    if args.device is not None:
        overrides.append(f"device={args.device}")
    if args.steps is not None:
        overrides.append(f"steps={args.steps}")
    return overrides


def _names_model_type(config: Path | None, overrides: list[str]) -> bool:
    from segany.train.config import read_yaml

    in_file = config is not None and "type" in (read_yaml(config).get("model") or {})
    return in_file or any(text.startswith("model.type=") for text in overrides)


def run(args: argparse.Namespace) -> int:
    from segany.train.config import load_config
    from segany.train.loop import train

    config = load_config(args.config, overrides_from_args(args))
    final = train(config, args.out, resume=args.resume)
    print(f"trained weights: {final}")
    return 0
