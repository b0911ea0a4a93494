"""What an evaluation leaves for people: metrics JSON, a Markdown report, plots and example grids.

Figures are drawn with matplotlib's file-only backend and written atomically like every
other output, so an interrupted run never leaves a half-drawn picture.
"""

from __future__ import annotations

import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segany.annotations import plain_json_value
from segany.io import atomic_write
from segany.visualize import overlay_masks


@dataclass
class Example:
    """One picture of a grid: an image with masks drawn over it, and a caption."""

    image: np.ndarray
    masks: list[np.ndarray]
    caption: str
    points: np.ndarray | None = None
    labels: np.ndarray | None = None


def write_metrics(path: Path, metrics: dict) -> None:
    with atomic_write(path, "w") as stream:
        json.dump(metrics, stream, indent=2, default=plain_json_value)


def save_figure(figure, path: Path) -> None:
    """Render a matplotlib figure to PNG and write it atomically."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    with atomic_write(path) as stream:
        stream.write(buffer.getvalue())


def pyplot():
    """matplotlib's pyplot on the non-interactive backend (evaluations run headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(curves: dict[str, list[float]], path: Path, xlabel: str, ylabel: str, title: str) -> None:
    """Several models' curves on one chart (e.g. mIoU against the number of clicks)."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(6, 4))
    for name, values in curves.items():
        axes.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=name)
    axes.xaxis.get_major_locator().set_params(integer=True)  # clicks are whole numbers
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    save_figure(figure, path)


def plot_precision_recall(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str) -> None:
    """Precision against recall per model, with the iso-F contours of the BSDS plots."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(5, 5))
    recall, precision = np.meshgrid(np.linspace(0.01, 1, 100), np.linspace(0.01, 1, 100))
    f_measure = 2 * precision * recall / (precision + recall)
    axes.contour(recall, precision, f_measure, levels=np.arange(0.1, 1.0, 0.1), colors="0.85", linewidths=0.7)
    for name, (recalls, precisions) in curves.items():
        axes.plot(recalls, precisions, label=name)
    axes.set(xlim=(0, 1), ylim=(0, 1), xlabel="recall", ylabel="precision", title=title)
    axes.legend(loc="lower left")
    save_figure(figure, path)


def example_grid(examples: list[Example], path: Path, title: str, columns: int = 4) -> None:
    """Overlays of the examples in a grid, each with its caption."""
    plt = pyplot()
    rows = max(1, -(-len(examples) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.0 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, example in zip(axes.flat, examples):
        picture = overlay_masks(example.image, example.masks, points=example.points, labels=example.labels)
        axis.imshow(picture)
        axis.set_title(example.caption, fontsize=8)
    figure.suptitle(title)
    save_figure(figure, path)


def best_and_worst(items: list, key, count: int) -> tuple[list, list]:
    """The ``count`` highest- and lowest-scoring items (without repeats when there are few)."""
    ordered = sorted(items, key=key, reverse=True)
    best = ordered[:count]
    worst = [item for item in ordered[::-1][:count] if all(item is not chosen for chosen in best)]
    return best, worst


def markdown_table(header: list[str], rows: list[list]) -> str:
    def cell(value) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def write_markdown(path: Path, title: str, sections: list[tuple[str, str]]) -> None:
    """A report: a title and (heading, body) sections; images are linked relative to the report."""
    text = f"# {title}\n\n" + "\n\n".join(f"## {heading}\n\n{body}" for heading, body in sections) + "\n"
    with atomic_write(path, "w") as stream:
        stream.write(text)


def image_link(picture: Path, report: Path, caption: str) -> str:
    return f"![{caption}]({os.path.relpath(picture, report.parent)})"


def safe_file_name(name: str) -> str:
    """A model name made safe to use in a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
