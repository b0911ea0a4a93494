"""Each fast mode's encoder speed and its quality against the exact float32 path.

Same random weights on every side; each side (the official package, then segany in each
mode) runs in its own process over the sample photos, timing ``set_image`` and answering a
fixed set of prompts per photo (a 3x3 grid of single points and one box, three masks each).
Quality is the mean IoU between a mode's masks and the exact mode's masks for the same
prompts; "non-trivial" counts exact masks covering 1-99% of the photo, the ones where a
disagreement could show (random weights give many all-or-nothing masks).

    python benches/bench_modes.py [--model vit_b] [--modes exact,bf16,int8] [--plot modes.png]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import REPO, peak_rss_mib, random_checkpoint, run_side, timed  # noqa: E402

IMAGES = REPO.parent / "shared" / "images"
OFFICIAL_MODELS = ("vit_b", "vit_l", "vit_h")


def prompts(height: int, width: int) -> list[dict]:
    """The fixed prompts for an image: nine single points on a 3x3 grid, and a central box."""
    grid = [dict(point_coords=np.array([[width * fx, height * fy]]), point_labels=np.array([1]))
            for fy in (0.25, 0.5, 0.75) for fx in (0.25, 0.5, 0.75)]
    return grid + [dict(box=np.array([width * 0.25, height * 0.25, width * 0.75, height * 0.75]))]


def measure(side: str, checkpoint: str, model_type: str, masks_path: str) -> dict:
    """Encode every sample photo, answer the prompts; save the masks, return timings."""
    from segany.io import list_images, read_image

    if side == "official":
        from segment_anything import SamPredictor, sam_model_registry

        predictor = SamPredictor(sam_model_registry[model_type](checkpoint=checkpoint))
    else:
        from segany import SamPredictor, build_sam
        from segany.speed import accelerate

        predictor = SamPredictor(accelerate(build_sam(model_type, checkpoint), side))
    encode_times, masks = [], {}
    for index, path in enumerate(list_images([IMAGES])):
        image = read_image(path)
        encode_times.append(timed(lambda: predictor.set_image(image), 1))
        answers = [predictor.predict(**prompt, multimask_output=True)[0] for prompt in prompts(*image.shape[:2])]
        masks[f"{index}_{path.stem}"] = np.packbits(np.stack(answers), axis=-1)
    np.savez_compressed(masks_path, **masks)
    return {"encoder_s": float(np.median(encode_times[1:] or encode_times)), "peak_mib": peak_rss_mib()}


def mask_ious(ours: np.ndarray, exact: np.ndarray) -> np.ndarray:
    intersection = np.logical_and(ours, exact).sum(axis=(-2, -1))
    union = np.logical_or(ours, exact).sum(axis=(-2, -1))
    return np.where(union > 0, intersection / np.maximum(union, 1), 1.0).ravel()


def compare(masks_path: Path, exact_path: Path) -> dict:
    """Mean and minimum mask IoU against the exact side, over all prompts and images."""
    ours, exact = np.load(masks_path), np.load(exact_path)
    ious, nontrivial = [], []
    for key in exact.files:
        a, b = np.unpackbits(ours[key], axis=-1).astype(bool), np.unpackbits(exact[key], axis=-1).astype(bool)
        ious.append(mask_ious(a, b))
        area = b.mean(axis=(-2, -1)).ravel()
        nontrivial.append((area > 0.01) & (area < 0.99))
    ious, nontrivial = np.concatenate(ious), np.concatenate(nontrivial)
    return {"mean_iou": float(ious.mean()), "min_iou": float(ious.min()), "masks": int(ious.size),
            "nontrivial": int(nontrivial.sum()),
            "nontrivial_mean_iou": float(ious[nontrivial].mean()) if nontrivial.any() else float("nan")}


def plot(rows: list[dict], path: Path) -> None:
    """Speed-up over the official encoder against mean mask IoU, one point per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for row in rows:
        axis.scatter(row["speedup"], row["mean_iou"])
        axis.annotate(row["side"], (row["speedup"], row["mean_iou"]), textcoords="offset points", xytext=(5, 5))
    axis.set_xlabel("encoder speed-up over the official package (x)")
    axis.set_ylabel("mean mask IoU against exact")
    axis.set_title("segany fast modes")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--masks", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="vit_b")
    parser.add_argument("--modes", default="exact,bf16,int8", help="comma-separated; 'exact' is always run")
    parser.add_argument("--plot", type=Path, help="also save speed vs quality as a PNG")
    args = parser.parse_args()
    if args.side:
        torch.set_grad_enabled(False)
        print(json.dumps(measure(args.side, args.checkpoint, args.model, args.masks)))
        return
    modes = ["exact"] + [mode for mode in args.modes.split(",") if mode and mode != "exact"]
    checkpoint = random_checkpoint(args.model)
    workdir = Path(tempfile.mkdtemp(prefix="segany-modes-"))
    results = {}
    official_sides = ["official"] if args.model in OFFICIAL_MODELS else []  # e.g. 'tiny' is segany's own
    for side in [*official_sides, *modes]:
        masks = workdir / f"{side}.npz"
        results[side] = run_side(Path(__file__), side, "--checkpoint", str(checkpoint), "--model", args.model,
                                 "--masks", str(masks))
        results[side].update(compare(masks, workdir / "exact.npz") if side != "official" else {})
        print(f"  {side}: {results[side]}", file=sys.stderr)
    print(f"{args.model}, random weights, {len(list(IMAGES.iterdir()))} photos x 10 prompts x 3 masks, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    official_time = results.get("official", {}).get("encoder_s", float("nan"))
    if official_sides:
        official_vs_exact = compare(workdir / "official.npz", workdir / "exact.npz")
        print(f"official vs exact: mean mask IoU {official_vs_exact['mean_iou']:.4f}, "
              f"official encoder {official_time:.2f} s/image, peak {results['official']['peak_mib']:.0f} MiB")
    print(f"{'mode':<16}{'s/image':>9}{'vs official':>13}{'vs exact':>10}{'mean IoU':>10}{'min IoU':>9}"
          f"{'non-trivial IoU':>17}{'peak MiB':>10}")
    rows = []
    for side in modes:
        row = dict(results[side], side=side, speedup=official_time / results[side]["encoder_s"])
        rows.append(row)
        print(f"{side:<16}{row['encoder_s']:>9.2f}{row['speedup']:>12.2f}x"
              f"{results['exact']['encoder_s'] / row['encoder_s']:>9.2f}x{row['mean_iou']:>10.4f}{row['min_iou']:>9.3f}"
              f"{row['nontrivial_mean_iou']:>10.4f} ({row['nontrivial']:>3}){row['peak_mib']:>10.0f}")
    if args.plot:
        plot(rows, args.plot)
    checkpoint.unlink()


if __name__ == "__main__":
    main()
