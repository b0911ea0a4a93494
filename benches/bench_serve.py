"""Click round trip of the annotation server over HTTP vs the official predictor called in-process.

The server (``segany serve``, its own process) gets random weights of the chosen model and
one photo; the image embedding is computed once first, then each "click" is one
``POST /api/images/ID/predict`` with a random point, timed from sending the request to
having the reply read (the three candidates' low-res logits as int16 plus their scores;
the page upscales them to the image itself). The reference is the official
``SamPredictor.predict`` with the same weights, image and points, called directly (no HTTP,
full-size masks); the ratio is official time / segany time.
Peak memory is the server process's high-water mark vs the official process's.

    python benches/bench_serve.py [--model vit_b] [--clicks 50]
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import REPO, SAMPLE_IMAGE, peak_rss_mib, print_table, random_checkpoint, run_side, timed  # noqa: E402

TARGET_MS = 50.0


def click_points(count: int, width: int, height: int) -> np.ndarray:
    return np.random.default_rng(0).uniform([0, 0], [width - 1, height - 1], size=(count, 2))


def measure_official(checkpoint: str, model_type: str, clicks: int) -> dict:
    """The official predictor in this process: decoder + upscaling for one point, multimask."""
    import torch
    from segment_anything import SamPredictor, sam_model_registry

    from segany.io import read_image

    torch.set_grad_enabled(False)
    image = read_image(SAMPLE_IMAGE)
    predictor = SamPredictor(sam_model_registry[model_type](checkpoint=checkpoint))
    predictor.set_image(image)
    points = iter(click_points(clicks + 1, image.shape[1], image.shape[0]))
    ask = lambda: predictor.predict(next(points)[None], np.array([1]), multimask_output=True)  # noqa: E731
    ask()  # warm-up
    return {"click_s": timed(ask, clicks), "peak_mib": peak_rss_mib()}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_peak_mib(pid: int) -> float:
    """High-water resident memory of a running process (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure_server(checkpoint: Path, model_type: str, clicks: int) -> dict:
    """Start ``segany serve`` on a folder holding the sample image, embed it, then time clicks."""
    work = Path(tempfile.mkdtemp(prefix="segany-bench-serve-"))
    images = work / "images"
    images.mkdir()
    shutil.copy(SAMPLE_IMAGE, images / SAMPLE_IMAGE.name)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "segany", "serve", str(images), "--db", str(work / "bench.sqlite"),
         "--checkpoint", str(checkpoint), "--model-type", model_type, "--port", str(port),
         "--prefetch", "0", "--watch-seconds", "0"],
        cwd=REPO, stdout=subprocess.DEVNULL,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as http:
            for _ in range(600):
                try:
                    http.get("/api/health")
                    break
                except httpx.TransportError:
                    time.sleep(0.2)
            image = http.get("/api/images").json()["images"][0]
            start = time.perf_counter()
            http.post(f"/api/images/{image['id']}/embedding").raise_for_status()
            embedding_s = time.perf_counter() - start
            points = click_points(clicks + 1, image["width"], image["height"])
            round_trips, server_side, sizes = [], [], []
            for index, point in enumerate(points):
                start = time.perf_counter()
                reply = http.post(f"/api/images/{image['id']}/predict", json={"points": [point.tolist()], "labels": [1]})
                reply.raise_for_status()
                logits = np.frombuffer(reply.content, "<i2")
                about = json.loads(reply.headers["X-Proposal"])
                elapsed = time.perf_counter() - start
                assert logits.size == np.prod(about["shape"])
                if index:  # the first click warms up
                    round_trips.append(elapsed)
                    server_side.append(about["milliseconds"] / 1000)
                    sizes.append(len(reply.content))
        return {
            "embedding_s": embedding_s,
            "click_s": statistics.median(round_trips),
            "click_p90_s": float(np.percentile(round_trips, 90)),
            "server_s": statistics.median(server_side),
            "reply_kib": statistics.median(sizes) / 1024,
            "peak_mib": server_peak_mib(server.pid),
        }
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", choices=["official"], help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="vit_b")
    parser.add_argument("--clicks", type=int, default=50)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(measure_official(args.checkpoint, args.model, args.clicks)))
        return
    checkpoint = random_checkpoint(args.model)
    try:
        official = run_side(Path(__file__), "official", "--checkpoint", str(checkpoint), "--model", args.model,
                            "--clicks", str(args.clicks))
        ours = measure_server(checkpoint, args.model, args.clicks)
    finally:
        shutil.rmtree(checkpoint.parent, ignore_errors=True)
    print(f"{args.model}, random weights, {SAMPLE_IMAGE.name}, {args.clicks} clicks; segany over HTTP "
          f"(embedding {ours['embedding_s']:.1f} s once), official predictor in-process")
    print_table([
        ("click, median round trip", official["click_s"] * 1000, ours["click_s"] * 1000, "ms"),
        ("click, 90th percentile", official["click_s"] * 1000, ours["click_p90_s"] * 1000, "ms"),
        ("peak memory (RSS)", official["peak_mib"], ours["peak_mib"], "M"),
    ])
    print(f"server-side time per click {ours['server_s'] * 1000:.1f} ms; reply {ours['reply_kib']:.1f} KiB; "
          f"target <= {TARGET_MS:.0f} ms round trip: {'met' if ours['click_s'] * 1000 <= TARGET_MS else 'NOT met'}")


if __name__ == "__main__":
    main()
