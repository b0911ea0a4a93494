"""Automatic mask generation, end to end: official SamAutomaticMaskGenerator vs segany's.

Same random vit_b weights and the same photo (resized so that its long side is 1024) on both
sides; each side runs in its own fresh process, so that its peak resident memory
(ru_maxrss, which includes the ~0.4 GB model) is its own. Both sides run at the official
defaults, then with crop_n_layers=1 (more configurations with --configs). Printed per
configuration: total time, the time spent in the image encoder (set_image; the same network
on both sides), the rest (prompting and post-processing, what the generator itself costs),
peak memory, and whether the records agree.

    python benches/bench_automask.py [--configs defaults,crops] [--model vit_b] [--image PATH]

Plain random weights predict IoUs near 0 and near-zero logits, so at the default thresholds
no mask would survive (and the official generator crashes on crops with no mask at all).
The weights are therefore made confident, like a trained model's, before both sides load
them: the IoU head's output bias is raised by 0.85 (about half the masks then pass
pred_iou_thresh=0.88) and the mask logits are scaled by 1000 (so that they pass the
stability threshold). --plain-random keeps the weights as drawn.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import REPO, kernel_cpu_s, print_table, random_checkpoint, run_side  # noqa: E402

CONFIGS = {
    "defaults": {},
    "crops": {"crop_n_layers": 1},
    "thresholds-off": {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0},
    "small-regions": {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "min_mask_region_area": 100},
}
DEFAULT_IMAGE = REPO.parent / "shared" / "images" / "dog.jpg"


def make_confident(checkpoint: Path, iou_bias: float = 0.85, logit_scale: float = 1000.0) -> None:
    """Raise the predicted IoUs and sharpen the mask logits of random weights, in place."""
    state = torch.load(checkpoint, weights_only=True)

    def last_layer(prefix: str) -> str:
        depth = max(int(key[len(prefix) :].split(".")[0]) for key in state if key.startswith(prefix))
        return f"{prefix}{depth}."

    state[last_layer("mask_decoder.iou_prediction_head.layers.") + "bias"] += iou_bias
    for index in range(4):  # mask logits are linear in the hypernetworks' last layers
        for name in ("weight", "bias"):
            state[last_layer(f"mask_decoder.output_hypernetworks_mlps.{index}.layers.") + name] *= logit_scale
    torch.save(state, checkpoint)


def load_image(path: Path, long_side: int) -> np.ndarray:
    from PIL import Image

    from segany.io import read_image

    image = read_image(path)
    scale = long_side / max(image.shape[:2])
    size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
    return np.array(Image.fromarray(image).resize(size, Image.BILINEAR))


def measure(
    side: str, checkpoint: str, model_type: str, image_path: str, long_side: int, config: str, records: str
) -> dict:
    """Run one side once; write its records (masks as COCO RLE) to ``records``; return timings."""
    import psutil

    from segany.masks import encode_rles

    if side == "official":
        from segment_anything import SamAutomaticMaskGenerator, sam_model_registry
    else:
        from segany import sam_model_registry
        from segany.automask import SamAutomaticMaskGenerator
    image = load_image(Path(image_path), long_side)
    generator = SamAutomaticMaskGenerator(sam_model_registry[model_type](checkpoint=checkpoint), **CONFIGS[config])

    encoder_seconds = 0.0
    set_image = generator.predictor.set_image

    def timed_set_image(*args, **kwargs):
        nonlocal encoder_seconds
        start = time.perf_counter()
        set_image(*args, **kwargs)
        encoder_seconds += time.perf_counter() - start

    generator.predictor.set_image = timed_set_image
    baseline_mib = psutil.Process().memory_info().rss / 2**20
    start, kernel_start = time.perf_counter(), kernel_cpu_s()
    output = generator.generate(image)
    total, kernel = time.perf_counter() - start, kernel_cpu_s() - kernel_start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    masks = np.stack([record["segmentation"] for record in output]) if output else np.zeros((0, *image.shape[:2]), bool)
    for record, rle in zip(output, encode_rles(masks)):
        record["segmentation"] = rle
    Path(records).write_text(json.dumps(output))
    return {
        "total_s": total,
        "encoder_s": encoder_seconds,
        "peak_mib": peak_mib,
        "peak_above_model_mib": peak_mib - baseline_mib,
        "kernel_s": kernel,
        "masks": len(output),
        "image": f"{image.shape[1]}x{image.shape[0]}",
    }


def compare(expected: list[dict], actual: list[dict]) -> str:
    """How far segany's records are from the official ones, in one line."""
    if len(expected) != len(actual):
        return f"DIFFERENT: {len(expected)} official vs {len(actual)} segany masks"
    from segany.masks import decode_rle

    same_prompts = all(
        a["point_coords"] == b["point_coords"] and a["crop_box"] == b["crop_box"] for a, b in zip(expected, actual)
    )
    flipped = sum(
        int((decode_rle(a["segmentation"]) != decode_rle(b["segmentation"])).sum())
        for a, b in zip(expected, actual)
        if a["segmentation"] != b["segmentation"]
    )
    identical = sum(a["segmentation"] == b["segmentation"] and a["bbox"] == b["bbox"] for a, b in zip(expected, actual))
    iou_gap = max((abs(a["predicted_iou"] - b["predicted_iou"]) for a, b in zip(expected, actual)), default=0.0)
    return (
        f"{len(actual)} masks, same order and prompts: {same_prompts}, "
        f"identical masks+boxes: {identical}/{len(actual)}, "
        f"pixels differing in all: {flipped}, max |predicted_iou gap|: {iou_gap:.1e}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", choices=["official", "segany"], help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--records", help=argparse.SUPPRESS)
    parser.add_argument("--config", choices=list(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--configs", default="defaults,crops", help=f"comma-separated, from: {', '.join(CONFIGS)}")
    parser.add_argument("--model", default="vit_b")
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--long-side", type=int, default=1024, help="resize the image to this long side first")
    parser.add_argument("--plain-random", action="store_true", help="do not make the random weights confident")
    args = parser.parse_args()
    common = ["--model", args.model, "--image", str(args.image), "--long-side", str(args.long_side)]
    if args.side:
        torch.set_grad_enabled(False)
        result = measure(
            args.side, args.checkpoint, args.model, str(args.image), args.long_side, args.config, args.records
        )
        print(json.dumps(result))
        return
    configs = args.configs.split(",")
    unknown = sorted(set(configs) - set(CONFIGS))
    if unknown:
        parser.error(f"unknown configs {unknown}; choose from {', '.join(CONFIGS)}")

    checkpoint = random_checkpoint(args.model)
    if not args.plain_random:
        make_confident(checkpoint)
    print(f"{args.model}, random weights, {args.image.name} (long side {args.long_side}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; each side in a fresh process, peak memory = ru_maxrss")
    with tempfile.TemporaryDirectory(prefix="segany-bench-") as scratch:
        for config in configs:
            results, records = {}, {}
            print(f"\n[{config}] {CONFIGS[config] or 'official defaults'}")
            for side in ("official", "segany"):
                path = Path(scratch) / f"{side}-{config}.json"
                try:
                    results[side] = run_side(Path(__file__), side, "--checkpoint", str(checkpoint), "--config", config,
                                             "--records", str(path), *common)
                except subprocess.CalledProcessError as error:
                    print(f"{side} side failed: {error.stderr.strip().splitlines()[-1]}")
                    continue
                records[side] = json.loads(path.read_text())
            if len(results) < 2:
                continue
            official, ours = results["official"], results["segany"]
            print(f"image {ours['image']}, {ours['masks']} masks")
            print_table([
                ("end to end (generate)", official["total_s"], ours["total_s"], "s"),
                ("  image encoder (set_image)", official["encoder_s"], ours["encoder_s"], "s"),
                ("  everything else", official["total_s"] - official["encoder_s"],
                 ours["total_s"] - ours["encoder_s"], "s"),
                ("peak memory (RSS, with model)", official["peak_mib"], ours["peak_mib"], "M"),
                ("peak memory above model", official["peak_above_model_mib"], ours["peak_above_model_mib"], "M"),
                ("kernel CPU time (page faults)", official["kernel_s"], ours["kernel_s"], "s"),
            ])
            print("records:", compare(records["official"], records["segany"]))
    checkpoint.unlink()


if __name__ == "__main__":
    main()
