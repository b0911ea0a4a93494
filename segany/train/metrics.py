"""The run's training log: one JSON line per logged step, and a picture of loss and mIoU."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from segany.io import atomic_write


class MetricsLog:
    """``metrics.jsonl`` of a run directory: append-only, cut back to a step when a run resumes."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a crash
                continue
        return records

    def truncate(self, step: int) -> None:
        """Drop the records after ``step`` (written by a run that went on past its last checkpoint)."""
        kept = [record for record in self.read() if record["step"] <= step]
        with atomic_write(self.path, "w") as stream:
            stream.writelines(json.dumps(record) + "\n" for record in kept)

    def append(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as stream:
            stream.write(json.dumps(record) + "\n")


def plot_metrics(records: list[dict[str, Any]], path: str | os.PathLike) -> None:
    """Loss terms (log scale) and mIoU against the step, side by side, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [record["step"] for record in records]
    figure, (losses, quality) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("loss", "total"), ("focal", "focal (x1)"), ("dice", "dice"), ("iou_mse", "IoU MSE")):
        losses.plot(steps, [record[key] for record in records], label=label)
    losses.set(xlabel="step", ylabel="loss", title="training loss", yscale="log")
    losses.legend()
    quality.plot(steps, [record["miou_first"] for record in records], label="after the first prompt")
    quality.plot(steps, [record["miou"] for record in records], label="after the last round")
    quality.set(xlabel="step", ylabel="mIoU", title="training mIoU (low-res masks)", ylim=(0, 1))
    quality.legend()
    figure.tight_layout()
    with atomic_write(path) as stream:
        figure.savefig(stream, format="png", dpi=100)
    plt.close(figure)
