"""GPU prompt latency: official vs segany with CUDA graphs vs segany eager, same weights, one process.

A one-point prompt on a GPU is a few hundred small kernels launched by the CPU, so its time is
mostly launch overhead and moves with the host's state: the three predictors run in one
process on the same image, taking turns in bursts of prompts, so that drift hits all alike.
Prints each side's median, the ratios official / segany, what the first two prompts of a
kind cost segany (eager, then eager + capture), and each side's GPU memory used while
prompting above what it held before (its image state). Needs a CUDA GPU.

    python benches/bench_gpu_predict.py --model-type vit_b --prompts 300
"""

from __future__ import annotations

import argparse
import statistics

import torch
from harness import SAMPLE_IMAGE, print_table, prompt_asker, random_checkpoint, timed

from segany.io import read_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-type", default="vit_b", choices=["vit_b", "vit_l", "vit_h"])
    parser.add_argument("--image", default=str(SAMPLE_IMAGE))
    parser.add_argument("--prompts", type=int, default=300, help="timed prompts per side")
    parser.add_argument("--burst", type=int, default=10, help="prompts a side asks before the next side's turn")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu_predict needs a CUDA GPU, and PyTorch sees none")
    if args.prompts < 1 or args.burst < 1:
        raise SystemExit("--prompts and --burst must be at least 1")

    from segment_anything import SamPredictor as OfficialPredictor
    from segment_anything import sam_model_registry

    import segany

    checkpoint = str(random_checkpoint(args.model_type))
    image = read_image(args.image)
    official = OfficialPredictor(sam_model_registry[args.model_type](checkpoint=checkpoint).cuda())
    model = segany.build_sam(args.model_type, checkpoint, device="cuda")
    sides = {
        "official": official,
        "segany (graphs)": segany.SamPredictor(model),
        "segany (eager)": segany.SamPredictor(model, cuda_graphs=False),
    }
    first_two = {}
    held, extra = {}, {}
    with torch.inference_mode():
        asks = {}
        for name, predictor in sides.items():
            predictor.set_image(image)
            torch.cuda.synchronize()
            held[name] = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            asks[name] = prompt_asker(predictor, image, args.prompts)  # masks come back to the host
            first_two[name] = [timed(asks[name], 1, "cuda"), timed(asks[name], 1, "cuda")]
            asks[name]()
            extra[name] = torch.cuda.max_memory_allocated() - held[name]
        times = {name: [] for name in sides}
        for burst in range(0, args.prompts, args.burst):
            order = list(sides) if (burst // args.burst) % 2 == 0 else list(reversed(sides))
            for name in order:
                for _ in range(burst, min(args.prompts, burst + args.burst)):
                    times[name].append(timed(asks[name], 1, "cuda"))

    median = {name: statistics.median(values) * 1000 for name, values in times.items()}
    print(f"\n{torch.cuda.get_device_name()}: {args.model_type} (seeded random weights), {args.prompts} prompts a side, "
          f"bursts of {args.burst}, torch {torch.__version__}")
    print_table([
        ("predict: segany with CUDA graphs", median["official"], median["segany (graphs)"], "ms"),
        ("predict: segany eager", median["official"], median["segany (eager)"], "ms"),
    ])
    for name, (first, second) in first_two.items():
        print(f"{name}: first prompt {first * 1000:.2f} ms, second {second * 1000:.2f} ms, "
              f"GPU memory while prompting {extra[name] / 2**20:.0f} MiB above its image state")


if __name__ == "__main__":
    main()
