"""Benchmark plumbing shared by ``segany bench`` and ``benches/``: timing, peak memory,
one process per side, the comparison table.

Each side (the official package, segany) runs in a fresh process so that its peak memory
is its own; a side prints one JSON line of results, which the parent reads back.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch


def synchronize(device: torch.device | str) -> None:
    """Wait for queued GPU work, so that a timer measures it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(function: Callable[[], object], repeat: int, device: torch.device | str = "cpu") -> float:
    """Median wall time of ``repeat`` calls, in seconds (GPU work included)."""
    times = []
    for _ in range(repeat):
        synchronize(device)
        start = time.perf_counter()
        function()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_rss_mib() -> float:
    """This process's peak resident memory so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def kernel_cpu_s() -> float:
    """CPU seconds this process has spent in the kernel so far.

    On CPU that is mostly page faults of freshly allocated memory: on a machine where those are
    slow, a side that allocates and frees very large tensors loses its time here.
    """
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


def peak_memory_mib(device: torch.device | str) -> float:
    """Peak memory of ``device`` so far: GPU memory allocated by torch on a GPU, else peak RSS."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mib()


def random_checkpoint(name: str, seed: int = 0) -> Path:
    """Save seeded random weights of a named config to a temporary .pth file (shared by both sides)."""
    from segany.build import build_sam

    torch.manual_seed(seed)
    model = build_sam(name)
    path = Path(tempfile.mkdtemp(prefix="segany-bench-")) / f"random_{name}.pth"
    torch.save(model.state_dict(), path)
    return path


def run_json(command: list[str]) -> dict:
    """Run ``command`` in a fresh process; it prints its results as one JSON line, last."""
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"benchmark side failed: {' '.join(command)}\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def print_table(rows: list[tuple[str, float, float, str]]) -> None:
    """Rows of (measure, official, segany, unit); prints the official/segany ratio (higher: segany better)."""
    print(f"{'measure':<40}{'official':>12}{'segany':>12}{'ratio':>9}")
    for measure, official, ours, unit in rows:
        ratio = official / ours if ours else float("nan")
        print(f"{measure:<40}{official:>10.3f}{unit:>2}{ours:>10.3f}{unit:>2}{ratio:>8.2f}x")
