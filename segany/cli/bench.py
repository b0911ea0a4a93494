"""``segany bench``: official segment_anything vs segany, same weights, same run, one table.

Each side (official, segany) runs in its own fresh process per device so that its peak
memory is its own. Ratios are official / segany: above 1 means segany is faster or smaller.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = "speed and peak memory, official vs segany: encoder, predictor, automatic generator (CPU; GPU when present)"

SIDES = ("official", "segany")
OFFICIAL_MODELS = ("vit_b", "vit_l", "vit_h")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path,
                        help="official-format weights both sides load (default: seeded random weights of --model-type)")
    parser.add_argument("--model-type", default="vit_b", help="vit_b | vit_l | vit_h (default: vit_b)")
    parser.add_argument("--image", type=Path, help="photo to run on (default: the bundled truck.jpg)")
    parser.add_argument("--encoder-runs", type=int, default=1, help="timed encoder runs after one warm-up (default 1)")
    parser.add_argument("--prompts", type=int, default=10, help="timed single-point predictions (default 10)")
    parser.add_argument("--points-per-side", type=int, default=8,
                        help="automatic generator grid, points per side (default 8; the official default is 32)")
    parser.add_argument("--mode", default="exact", help="segany speed mode on CPU (exact, bf16, int8, compile, a+b)")
    parser.add_argument("--gpu-mode", default="bf16", help="segany speed mode on GPU (default bf16)")
    parser.add_argument("--gpu-batch", type=int, default=16, help="images per encoder batch for GPU throughput (default 16)")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--cpu-only", action="store_true", help="skip the GPU even when one is present")
    only.add_argument("--gpu-only", action="store_true", help="skip the CPU (needs a CUDA GPU)")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)


def measure(args: argparse.Namespace) -> dict[str, float]:
    """One side on one device: encoder, per-prompt and automatic-generator timings, peak memory."""
    import numpy as np
    import torch

    from segany.io import read_image
    from segany.speed.measure import peak_memory_mib, timed

    device = torch.device(args.device)
    image = read_image(args.image)
    if args.side == "official":
        from segment_anything import SamAutomaticMaskGenerator, SamPredictor, sam_model_registry

        model = sam_model_registry[args.model_type](checkpoint=str(args.checkpoint)).to(device)
    else:
        from segany import SamPredictor, build_sam
        from segany.automask import SamAutomaticMaskGenerator
        from segany.speed import accelerate

        model = build_sam(args.model_type, args.checkpoint, device=device)
        accelerate(model, args.gpu_mode if device.type == "cuda" else args.mode)
    predictor = SamPredictor(model)
    predictor.set_image(image)  # warm-up (and compilation, in compile modes)
    results = {"encoder_s": timed(lambda: predictor.set_image(image), args.encoder_runs, device)}

    height, width = image.shape[:2]
    points = np.random.default_rng(0).uniform([0, 0], [width - 1, height - 1], size=(args.prompts, 2))
    asked = iter(range(10**9))
    ask = lambda: predictor.predict(points[next(asked) % args.prompts][None], np.array([1]))  # noqa: E731
    ask()
    results["predict_s"] = timed(ask, args.prompts, device)

    generator = SamAutomaticMaskGenerator(model, points_per_side=args.points_per_side)
    results["automatic_s"] = timed(lambda: generator.generate(image), 1, device)

    if device.type == "cuda":
        dtype = next(model.image_encoder.parameters()).dtype
        batch = torch.randn(args.gpu_batch, 3, model.image_encoder.img_size, model.image_encoder.img_size,
                            device=device, dtype=dtype)
        model.image_encoder(batch)  # warm-up at this batch size
        results["encoder_batch_s"] = timed(lambda: model.image_encoder(batch), 3, device) / args.gpu_batch
    results["peak_mib"] = peak_memory_mib(device)
    return results


def compare(args: argparse.Namespace, device: str) -> None:
    """Run both sides on ``device`` and print their table."""
    from segany.speed.measure import print_table, run_json

    common = ["--checkpoint", str(args.checkpoint), "--model-type", args.model_type, "--image", str(args.image),
              "--encoder-runs", str(args.encoder_runs), "--prompts", str(args.prompts),
              "--points-per-side", str(args.points_per_side), "--mode", args.mode, "--gpu-mode", args.gpu_mode,
              "--gpu-batch", str(args.gpu_batch), "--device", device]
    official, ours = (run_json([sys.executable, "-m", "segany", "bench", "--side", side, *common]) for side in SIDES)
    mode = args.gpu_mode if device.startswith("cuda") else args.mode
    print(f"\n{device}: {args.model_type}, segany mode '{mode}', {args.image.name}")
    rows = [
        ("encoder (set_image)", official["encoder_s"], ours["encoder_s"], "s"),
        ("predict, 1 point, multimask", official["predict_s"] * 1000, ours["predict_s"] * 1000, "ms"),
        (f"automatic, {args.points_per_side}x{args.points_per_side} points", official["automatic_s"],
         ours["automatic_s"], "s"),
    ]
    if "encoder_batch_s" in ours:
        rows.append((f"encoder, batch {args.gpu_batch}, per image", official["encoder_batch_s"],
                     ours["encoder_batch_s"], "s"))
    rows.append(("peak memory" + (" (GPU)" if device.startswith("cuda") else " (RSS)"),
                 official["peak_mib"], ours["peak_mib"], "M"))
    print_table(rows)
    print(f"automatic generator: official {1 / official['automatic_s']:.3f} images/s, "
          f"segany {1 / ours['automatic_s']:.3f} images/s")


def run(args: argparse.Namespace) -> int:
    from segany.speed.modes import parse_mode

    for name in ("encoder_runs", "prompts", "points_per_side", "gpu_batch"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.image is None:
        args.image = Path(__file__).resolve().parents[1] / "assets" / "truck.jpg"
    if not args.image.is_file():
        raise FileNotFoundError(f"--image not found: {args.image}")
    if args.checkpoint is not None and not args.checkpoint.is_file():
        raise FileNotFoundError(f"--checkpoint not found: {args.checkpoint}")
    if args.side:
        import torch

        with torch.inference_mode():
            print(json.dumps(measure(args)))
        return 0
    if args.model_type not in OFFICIAL_MODELS:
        raise ValueError(f"--model-type must be one the official package builds ({', '.join(OFFICIAL_MODELS)}), "
                         f"got {args.model_type!r}")

    import torch

    from segany.speed.measure import random_checkpoint

    has_gpu = torch.cuda.is_available()
    if args.gpu_only and not has_gpu:
        raise ValueError("--gpu-only needs a CUDA GPU, and PyTorch sees none")
    devices = ([] if args.gpu_only else ["cpu"]) + (["cuda"] if has_gpu and not args.cpu_only else [])
    parse_mode(args.mode, "cpu")
    if "cuda" in devices:
        parse_mode(args.gpu_mode, "cuda")
    temporary = args.checkpoint is None
    if temporary:
        args.checkpoint = random_checkpoint(args.model_type)
        print(f"random {args.model_type} weights (seed 0): {args.checkpoint}", file=sys.stderr)
    try:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
        for device in devices:
            compare(args, device)
    finally:
        if temporary:
            args.checkpoint.unlink()
    return 0
