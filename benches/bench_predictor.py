"""Encoder and per-prompt speed, and peak memory: official segment_anything vs segany.

Same random vit_b weights and the same photo on both sides, each side in its own process.
Ratios are official time / segany time (higher is better for segany), and official peak
memory / segany peak memory. ``--ours default`` runs segany's embedded model instead (the
official side keeps --model), against its targets: <= 1 s to embed the photo, <= 20 ms a prompt.

A second table gives each side's arithmetic (GFLOP of matrix products, convolutions and
attention, counted with ``segany.speed.flops.FlopCounter``; segany's ``set_image`` includes the
decoder's per-image projections), the rate each side achieved, and the time segany's
arithmetic would take at this machine's float32 matmul rate (measured in each side's process;
the predict figure leaves out the masks' resizing to the photo, which is not matrix work).

    python benches/bench_predictor.py [--model vit_b] [--ours default] [--encoder-runs 3] [--prompts 20] [--rounds 1]
                                      [--paired N [--burst 8]]

``--rounds N`` runs the pair N times, alternating which side goes first, prints each round's
ratios and then the table of each measure's median over the rounds: on a machine whose speed
drifts between minutes, that keeps one side from taking all of a slow spell. ``--paired N`` then
keeps both sides alive in two processes and times N pairs of predict bursts, the sides taking
turns burst by burst, and prints the median of the pairs' ratios: the figure least moved by the
machine's drift (each burst's first prompt follows the other side's burst, as in interactive use).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402
    SAMPLE_IMAGE,
    kernel_cpu_s,
    peak_rss_mib,
    print_table,
    prompt_asker,
    random_checkpoint,
    run_side,
    timed,
)


EMBEDDED_TARGETS = {"encoder_s": 1.0, "predict_s": 0.020}


def build_predictor(side: str, checkpoint: str, model_type: str, ours: str | None) -> tuple[Any, np.ndarray]:
    """One side's predictor and the sample photo."""
    from segany.io import read_image

    image = read_image(SAMPLE_IMAGE)
    if side == "official":
        from segment_anything import SamPredictor, sam_model_registry

        return SamPredictor(sam_model_registry[model_type](checkpoint=checkpoint)), image
    from segany import SamPredictor, build_sam, sam_model_registry

    model = build_sam("default") if ours == "default" else sam_model_registry[model_type](checkpoint=checkpoint)
    return SamPredictor(model), image


def measure(side: str, checkpoint: str, model_type: str, encoder_runs: int, prompts: int, ours: str | None) -> dict:
    predictor, image = build_predictor(side, checkpoint, model_type, ours)
    encoder = timed(lambda: predictor.set_image(image), encoder_runs)
    ask = prompt_asker(predictor, image, prompts)
    ask()  # warm-up
    predict = timed(ask, prompts)
    results = {"encoder_s": encoder, "predict_s": predict, "peak_mib": peak_rss_mib(), "kernel_s": kernel_cpu_s()}
    # Arithmetic last, so that the counted runs touch neither the timings nor the peak memory
    # (importing the counter alone adds ~80 MB: torch's FLOP formulas bring sympy).
    from segany.speed.flops import FlopCounter, matmul_rate

    with FlopCounter() as counted:
        predictor.set_image(image)
    results["encoder_flops"] = counted.total
    with FlopCounter() as counted:
        ask()
    return results | {"predict_flops": counted.total, "matmul_flops_per_s": matmul_rate()}


def serve_bursts(side: str, checkpoint: str, model_type: str, ours: str | None, prompts: int, burst: int) -> None:
    """The paired mode's side: set the photo, then for each line on stdin time ``burst`` prompts
    and print their median (seconds)."""
    predictor, image = build_predictor(side, checkpoint, model_type, ours)
    predictor.set_image(image)
    ask = prompt_asker(predictor, image, prompts)
    ask()  # warm-up
    print("ready", flush=True)
    for _ in sys.stdin:
        print(timed(ask, burst), flush=True)


def paired(script: Path, common: list[str], pairs: int, burst: int) -> None:
    """Predict on both sides in two live processes, ``burst`` prompts at a time, taking turns:
    each pair of bursts runs within a second, so the machine's drift (which moves a round's
    ratio by a factor of two on the development VM) hits both sides alike."""
    sides = ("official", "segany")
    command = [sys.executable, str(script), "--serve", str(burst), *common]
    processes = {
        side: subprocess.Popen([*command, "--side", side], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for side in sides
    }
    try:
        for side, process in processes.items():
            if process.stdout.readline().strip() != "ready":
                raise RuntimeError(f"the {side} side did not start (exit code {process.wait()})")
        times = {side: [] for side in sides}
        for index in tqdm(range(pairs), desc="paired bursts", leave=False):
            for side in sides if index % 2 == 0 else sides[::-1]:
                processes[side].stdin.write("go\n")
                processes[side].stdin.flush()
                answer = processes[side].stdout.readline()
                if not answer:
                    raise RuntimeError(f"the {side} side stopped (exit code {processes[side].wait()})")
                times[side].append(float(answer))
    finally:
        for process in processes.values():
            process.stdin.close()
            process.wait()
    official, ours = (statistics.median(times[side]) * 1e3 for side in sides)
    ratio = statistics.median(o / s for o, s in zip(times["official"], times["segany"], strict=True))
    print(f"predict, paired ({pairs} bursts of {burst} prompts, the sides taking turns): official {official:.1f} ms, "
          f"segany {ours:.1f} ms (medians), ratio {ratio:.2f}x (median of the pairs' ratios)")


def medians(runs: list[dict]) -> dict:
    """Each measure's median over runs of one side."""
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def print_arithmetic(official: dict, ours: dict) -> None:
    """Each side's arithmetic (matrix products, convolutions, attention) and the rate it ran at,
    against this machine's float32 matmul rate measured in the same process: where a time ratio
    comes from, fewer operations or faster ones, and how far each side is from the machine."""
    print(f"{'arithmetic':<40}{'official':>12}{'segany':>12}{'ratio':>9}")
    for stage, unit, scale in (("encoder", "s", 1.0), ("predict", "ms", 1e3)):
        flops = official[f"{stage}_flops"], ours[f"{stage}_flops"]
        print(f"{stage + ' GFLOP':<40}{flops[0] / 1e9:>12.3f}{flops[1] / 1e9:>12.3f}{flops[0] / flops[1]:>8.2f}x")
        rates = [side[f"{stage}_flops"] / side[f"{stage}_s"] / 1e9 for side in (official, ours)]
        print(f"{stage + ' GFLOP/s achieved':<40}{rates[0]:>12.1f}{rates[1]:>12.1f}")
        floor = flops[1] / ours["matmul_flops_per_s"] * scale
        print(f"{'  segany ' + stage + ' at the matmul rate':<40}{'':>12}{floor:>10.3f}{unit:>2}")
    machine = official["matmul_flops_per_s"] / 1e9, ours["matmul_flops_per_s"] / 1e9
    print(f"{'machine matmul GFLOP/s (4096x768x3072)':<40}{machine[0]:>12.1f}{machine[1]:>12.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", choices=["official", "segany"], help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="vit_b")
    parser.add_argument("--ours", choices=["default"], help="segany side: the embedded model instead of --model")
    parser.add_argument("--encoder-runs", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=1, help="pairs of runs, sides alternating first")
    parser.add_argument("--paired", type=int, default=0, metavar="N",
                        help="then N pairs of predict bursts, the two sides taking turns (drift-robust ratio)")
    parser.add_argument("--burst", type=int, default=8, help="prompts per burst with --paired")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        torch.set_grad_enabled(False)
        if args.serve:
            serve_bursts(args.side, args.checkpoint, args.model, args.ours, args.prompts, args.serve)
            return
        print(json.dumps(measure(args.side, args.checkpoint, args.model, args.encoder_runs, args.prompts, args.ours)))
        return
    checkpoint = random_checkpoint(args.model)
    common = ["--checkpoint", str(checkpoint), "--model", args.model,
              "--encoder-runs", str(args.encoder_runs), "--prompts", str(args.prompts)]
    common += ["--ours", args.ours] if args.ours else []
    rounds = []
    for index in range(args.rounds):
        order = ("official", "segany") if index % 2 == 0 else ("segany", "official")
        rounds.append({side: run_side(Path(__file__), side, *common) for side in order})
        if args.rounds > 1:
            pair = rounds[-1]
            print(f"round {index + 1} ({order[0]} first): encoder {pair['official']['encoder_s']:.2f} / "
                  f"{pair['segany']['encoder_s']:.2f} s, predict {pair['official']['predict_s'] * 1e3:.1f} / "
                  f"{pair['segany']['predict_s'] * 1e3:.1f} ms (official / segany)", flush=True)
    official, ours = (medians([pair[side] for pair in rounds]) for side in ("official", "segany"))
    segany_side = "the embedded model" if args.ours else f"{args.model}, random weights"
    print(f"official {args.model} (random weights) vs segany {segany_side}, {SAMPLE_IMAGE.name}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print_table([
        ("encoder (set_image)", official["encoder_s"], ours["encoder_s"], "s"),
        ("predict, 1 point, multimask", official["predict_s"] * 1000, ours["predict_s"] * 1000, "ms"),
        ("peak memory (RSS)", official["peak_mib"], ours["peak_mib"], "M"),
        ("kernel CPU time, whole side (page faults)", official["kernel_s"], ours["kernel_s"], "s"),
    ])
    print_arithmetic(official, ours)
    if args.paired:
        paired(Path(__file__), common, args.paired, args.burst)
    if args.ours:
        for name, target in EMBEDDED_TARGETS.items():
            verdict = "met" if ours[name] <= target else "missed"
            print(f"embedded model {name.removesuffix('_s')}: {ours[name]:.3f} s, target <= {target} s: {verdict}")
    checkpoint.unlink()


if __name__ == "__main__":
    main()
