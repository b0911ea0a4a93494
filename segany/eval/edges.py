"""Zero-shot edge detection, scored with the BSDS500 benchmark's protocol.

Edge maps (the paper's recipe): prompt SAM with a 16x16 grid of foreground points (3 masks
each), drop duplicate masks by box NMS, take the Sobel gradient magnitude of every remaining
mask's unthresholded probability map, keep the strongest response per pixel, then thin it
with edge NMS along the local edge normal (as in Dollar & Zitnick's structured edges toolbox,
whose post-processing the BSDS literature uses).

Scoring (the BSDS500 benchmark): at each of ``K`` thresholds the map is binarised and thinned
to one pixel, then each human boundary map is matched one-to-one to the detected pixels within
``0.0075`` of the image diagonal (a maximum bipartite matching). A detection is correct if it
matches any annotator; recall counts every annotator's matched pixels. ODS is the best F at
one threshold for the whole dataset, OIS with each image's best threshold, AP the area under
the precision-recall curve.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

MAX_DISTANCE = 0.0075  # the BSDS tolerance, as a fraction of the image diagonal
EDGE_NMS_RADIUS = 1
EDGE_NMS_MULTIPLIER = 1.01  # a pixel survives NMS unless a neighbour along the normal beats it by 1%
BORDER_SUPPRESSION = 5  # edge strength fades to zero over this many pixels at the image border


# -- edge maps -----------------------------------------------------------------------------


class SamEdgeDetector:
    """Edge maps in [0, 1] from a :class:`segany.eval.segmenters.SamSegmenter`'s model (see module docstring)."""

    def __init__(self, segmenter, points_per_side: int = 16, nms_thresh: float = 0.7, points_per_batch: int = 64) -> None:
        if points_per_side < 1:
            raise ValueError(f"points_per_side must be at least 1, got {points_per_side}")
        self.segmenter = segmenter
        self.points_per_side = points_per_side
        self.nms_thresh = nms_thresh
        self.points_per_batch = points_per_batch

    def __call__(self, image: np.ndarray) -> np.ndarray:
        import torch

        from segany.automask import point_grid
        from segany.masks import box_nms, masks_to_boxes

        self.segmenter.set_image(image)
        predictor = self.segmenter.predictor
        height, width = image.shape[:2]
        points = point_grid(self.points_per_side) * np.array([width, height])
        logits, scores = [], []
        with torch.inference_mode():
            for start in range(0, len(points), self.points_per_batch):
                batch = predictor.transform.apply_coords(points[start : start + self.points_per_batch], (height, width))
                coords = torch.as_tensor(batch, dtype=torch.float, device=predictor.device)[:, None]
                labels = torch.ones(len(batch), 1, dtype=torch.int, device=predictor.device)
                _, iou, low_res = predictor.predict_torch(coords, labels, multimask_output=True, return_logits=True)
                logits.append(low_res.flatten(0, 1))
                scores.append(iou.flatten())
            logits, scores = torch.cat(logits), torch.cat(scores).float()
            # Duplicates are found on the low-res masks: box IoU does not depend on the scale.
            keep = box_nms(masks_to_boxes(logits > predictor.model.mask_threshold), scores, self.nms_thresh)
            strength = np.zeros((height, width), np.float32)
            for start in range(0, len(keep), self.points_per_batch):
                chosen = logits[keep[start : start + self.points_per_batch]][:, None]
                probabilities = torch.sigmoid(
                    predictor.model.postprocess_masks(chosen, predictor.input_size, predictor.original_size)
                )[:, 0].cpu().numpy()
                for probability in probabilities:
                    np.maximum(strength, sobel_magnitude(probability), out=strength)
        return edge_nms(strength / max(float(strength.max()), 1e-12))


def sobel_magnitude(image: np.ndarray) -> np.ndarray:
    """Gradient magnitude of a float image with 3x3 Sobel filters."""
    gx = cv2.Sobel(image, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(image, cv2.CV_32F, 0, 1, ksize=3)
    return np.sqrt(gx * gx + gy * gy)


def triangle_blur(image: np.ndarray, radius: int) -> np.ndarray:
    """Separable triangle filter of the given radius (the toolbox's ``convTri``)."""
    kernel = np.concatenate([np.arange(1, radius + 2), np.arange(radius, 0, -1)]).astype(np.float32)
    kernel /= kernel.sum()
    return cv2.sepFilter2D(image.astype(np.float32), -1, kernel, kernel, borderType=cv2.BORDER_REFLECT)


def edge_orientation(edges: np.ndarray) -> np.ndarray:
    """Angle in [0, pi) of each pixel's edge normal, from second derivatives of the smoothed map."""
    smooth = triangle_blur(edges, 4)
    oy, ox = np.gradient(smooth)
    _, oxx = np.gradient(ox)
    oyy, oxy = np.gradient(oy)
    return np.mod(np.arctan(oyy * np.sign(-oxy) / (oxx + 1e-5)), np.pi)


def edge_nms(edges: np.ndarray) -> np.ndarray:
    """Keep only pixels at least as strong as their neighbours along the edge normal; fade the border."""
    edges = edges.astype(np.float32)
    orientation = edge_orientation(edges)
    height, width = edges.shape
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    cos, sin = np.cos(orientation).astype(np.float32), np.sin(orientation).astype(np.float32)
    keep = np.ones(edges.shape, bool)
    for step in range(-EDGE_NMS_RADIUS, EDGE_NMS_RADIUS + 1):
        if step == 0:
            continue
        neighbour = cv2.remap(edges, xs + step * cos, ys + step * sin, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        keep &= edges * EDGE_NMS_MULTIPLIER >= neighbour
    suppressed = np.where(keep, edges, 0.0).astype(np.float32)
    border = np.minimum(np.minimum(xs, width - 1 - xs), np.minimum(ys, height - 1 - ys))
    return suppressed * np.clip(border / BORDER_SUPPRESSION, 0.0, 1.0)


# -- thinning and matching -----------------------------------------------------------------


def _thinning_tables() -> tuple[np.ndarray, np.ndarray]:
    """For each of the 256 neighbourhoods, whether a pixel may go in sub-iteration 1 and 2.

    The two-sub-iteration thinning of Guo & Hall (1989), the one MATLAB's ``bwmorph(.., 'thin')``
    runs in the BSDS benchmark. Neighbours x1..x8 start east and turn anticlockwise.
    """
    first, second = np.zeros(256, bool), np.zeros(256, bool)
    for code in range(256):
        x = [(code >> bit) & 1 for bit in range(8)]  # x[0] = x1 ... x[7] = x8
        x = x + [x[0]]
        crossings = sum(1 for k in range(4) if not x[2 * k] and (x[2 * k + 1] or x[2 * k + 2]))
        n1 = sum(x[2 * k] or x[2 * k + 1] for k in range(4))
        n2 = sum(x[2 * k + 1] or x[2 * k + 2] for k in range(4))
        if crossings != 1 or not 2 <= min(n1, n2) <= 3:
            continue
        x1, x2, x3, x4, x5, x6, x7, x8 = x[:8]
        first[code] = not ((x2 or x3 or not x8) and x1)
        second[code] = not ((x6 or x7 or not x4) and x5)
    return first, second


THINNING_TABLES = _thinning_tables()
# (row, column) offsets of x1..x8: E, NE, N, NW, W, SW, S, SE
NEIGHBOUR_OFFSETS = ((0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1))


def thin(binary: np.ndarray) -> np.ndarray:
    """Thin a bool image to one-pixel-wide curves, repeating until nothing changes."""
    image = binary.astype(bool).copy()
    height, width = image.shape
    while True:
        changed = False
        for table in THINNING_TABLES:
            padded = np.pad(image, 1)
            code = np.zeros(image.shape, np.uint8)
            for bit, (dy, dx) in enumerate(NEIGHBOUR_OFFSETS):
                code |= padded[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width].astype(np.uint8) << bit
            remove = image & table[code]
            if remove.any():
                image &= ~remove
                changed = True
        if not changed:
            return image


def disc_offsets(radius: float) -> np.ndarray:
    """Integer (dy, dx) offsets within ``radius`` of the origin."""
    reach = int(np.floor(radius))
    dy, dx = np.mgrid[-reach : reach + 1, -reach : reach + 1]
    inside = dy * dy + dx * dx <= radius * radius
    return np.stack([dy[inside], dx[inside]], axis=1)


def correspond_pixels(detected: np.ndarray, truth: np.ndarray, max_distance: float) -> tuple[np.ndarray, np.ndarray]:
    """Match detected edge pixels one-to-one to true boundary pixels no farther than ``max_distance`` px.

    Returns the matched detected pixels and the matched true pixels (bool maps). The matching
    has the most pairs possible (Hopcroft-Karp on the sparse graph of close pairs), which is
    the count the benchmark's min-cost assignment with outlier costs also reaches.
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_bipartite_matching

    matched_detected = np.zeros(detected.shape, bool)
    matched_truth = np.zeros(truth.shape, bool)
    offsets = disc_offsets(max_distance)
    # Only pixels with a partner in reach can match: leave the others out of the graph.
    reach = int(max_distance)
    disc = np.zeros((2 * reach + 1, 2 * reach + 1), np.uint8)
    disc[offsets[:, 0] + reach, offsets[:, 1] + reach] = 1
    dys, dxs = np.nonzero(detected & cv2.dilate(truth.astype(np.uint8), disc).astype(bool))
    tys, txs = np.nonzero(truth & cv2.dilate(detected.astype(np.uint8), disc).astype(bool))
    if len(dys) == 0:
        return matched_detected, matched_truth
    truth_index = np.full(truth.shape, -1, np.int64)
    truth_index[tys, txs] = np.arange(len(tys))
    height, width = truth.shape
    rows, columns = [], []
    for oy, ox in offsets:
        y, x = dys + oy, dxs + ox
        candidates = np.flatnonzero((y >= 0) & (y < height) & (x >= 0) & (x < width))
        partners = truth_index[y[candidates], x[candidates]]
        close = partners >= 0
        rows.append(candidates[close])
        columns.append(partners[close])
    rows, columns = np.concatenate(rows), np.concatenate(columns)
    graph = csr_matrix((np.ones(len(rows), np.int8), (rows, columns)), shape=(len(dys), len(tys)))
    partner = maximum_bipartite_matching(graph, perm_type="column")
    hit = partner >= 0
    matched_detected[dys[hit], dxs[hit]] = True
    matched_truth[tys[partner[hit]], txs[partner[hit]]] = True
    return matched_detected, matched_truth


# -- scores --------------------------------------------------------------------------------


def thresholds(count: int) -> np.ndarray:
    """The benchmark's ``count`` thresholds, evenly inside (0, 1)."""
    if count < 1:
        raise ValueError(f"the number of thresholds must be at least 1, got {count}")
    return np.linspace(1 / (count + 1), 1 - 1 / (count + 1), count)


def image_counts(edges: np.ndarray, truths: list[np.ndarray], levels: np.ndarray) -> np.ndarray:
    """Per threshold: matched true pixels, all true pixels, matched detections, all detections (K x 4).

    An image without ground truth still counts its detections (all false).
    """
    height, width = edges.shape
    max_distance = MAX_DISTANCE * np.hypot(height, width)
    counts = np.zeros((len(levels), 4), np.int64)
    all_truth = sum(int(np.count_nonzero(truth)) for truth in truths)
    for k, level in enumerate(levels):
        detected = thin(edges >= max(level, np.finfo(np.float32).eps))
        any_match = np.zeros(edges.shape, bool)
        matched_truth = 0
        for truth in truths:
            matched_detected, matched = correspond_pixels(detected, truth, max_distance)
            any_match |= matched_detected
            matched_truth += int(np.count_nonzero(matched))
        counts[k] = (matched_truth, all_truth, np.count_nonzero(any_match), np.count_nonzero(detected))
    return counts


def recall_precision(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Recall and precision from (..., 4) counts; nothing detected is precision 0, as in the benchmark."""
    counts = counts.astype(np.float64)
    eps = np.finfo(float).eps
    return counts[..., 0] / np.maximum(counts[..., 1], eps), counts[..., 2] / np.maximum(counts[..., 3], eps)


def f_measure(recall, precision):
    return 2 * precision * recall / np.maximum(precision + recall, np.finfo(float).eps)


def best_f(levels: np.ndarray, recall: np.ndarray, precision: np.ndarray) -> dict:
    """Best F on the curve, interpolating linearly between neighbouring thresholds (100 steps)."""
    if len(levels) == 1:
        return {"threshold": float(levels[0]), "recall": float(recall[0]), "precision": float(precision[0]),
                "f": float(f_measure(recall[0], precision[0]))}
    weight = np.linspace(0, 1, 100)[None]
    r = recall[1:, None] * weight + recall[:-1, None] * (1 - weight)
    p = precision[1:, None] * weight + precision[:-1, None] * (1 - weight)
    t = levels[1:, None] * weight + levels[:-1, None] * (1 - weight)
    f = f_measure(r, p)
    best = np.unravel_index(int(np.argmax(f)), f.shape)
    return {"threshold": float(t[best]), "recall": float(r[best]), "precision": float(p[best]), "f": float(f[best])}


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """Precision averaged over recall 0, 0.01, ..., 1 where the curve reaches (the benchmark's AP)."""
    order = np.argsort(recall, kind="stable")
    recall, precision = recall[order], precision[order]
    unique_recall, first = np.unique(recall, return_index=True)
    samples = np.linspace(0, 1, 101)
    inside = (samples >= unique_recall[0]) & (samples <= unique_recall[-1])
    return float(np.interp(samples[inside], unique_recall, precision[first]).sum() / 100)


def summarize(levels: np.ndarray, per_image: list[np.ndarray]) -> dict:
    """ODS, OIS and AP from every image's K x 4 counts."""
    if not per_image:
        raise ValueError("no image was evaluated: the dataset holds no readable image with boundaries")
    per_image = np.asarray(per_image, np.int64)  # images x K x 4
    recall, precision = recall_precision(per_image.sum(axis=0))
    ods = best_f(levels, recall, precision)
    image_recall, image_precision = recall_precision(per_image)
    best_level = np.argmax(f_measure(image_recall, image_precision), axis=1)
    ois_recall, ois_precision = recall_precision(per_image[np.arange(len(per_image)), best_level].sum(axis=0))
    return {
        "images": len(per_image),
        "ods": ods["f"],
        "ods_threshold": ods["threshold"],
        "ods_recall": ods["recall"],
        "ods_precision": ods["precision"],
        "ois": float(f_measure(ois_recall, ois_precision)),
        "ap": average_precision(recall, precision),
        "recall": recall.tolist(),
        "precision": precision.tolist(),
    }


# -- ground truth --------------------------------------------------------------------------


def object_boundaries(sample) -> list[np.ndarray]:
    """The ground truth of a mask dataset's sample: one boundary map of all its objects."""
    return [mask_boundaries(sample.masks)] if sample.masks else []


def annotator_boundaries(sample) -> list[np.ndarray]:
    """The ground truth of a BSDS sample (see :func:`bsds_samples`): its annotators' boundary maps."""
    return sample.masks


def mask_boundaries(masks: list[np.ndarray]) -> np.ndarray:
    """One boundary map for a set of object masks: their pixels with a 4-neighbour outside."""
    boundary = np.zeros(masks[0].shape, bool)
    kernel = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.uint8)
    for mask in masks:
        inner = cv2.erode(mask.astype(np.uint8), kernel, borderType=cv2.BORDER_REPLICATE).astype(bool)
        boundary |= mask & ~inner
    return boundary


def read_bsds_boundaries(path: Path) -> list[np.ndarray]:
    """The human boundary maps of a BSDS500 ``groundTruth/*.mat`` file, one per annotator."""
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:
        cells = loadmat(str(path))["groundTruth"]
        return [np.asarray(cell["Boundaries"][0, 0], bool) for cell in cells.ravel()]
    except (MatReadError, OSError, ValueError, KeyError, IndexError, TypeError) as error:
        raise ValueError(f"cannot read BSDS ground truth {path}: {error}") from None


def bsds_samples(folder: Path, split: str | None = None) -> list:
    """The images of a BSDS500 ``data`` folder (``images/`` + ``groundTruth/``) as dataset samples.

    Each sample's ``masks`` are the annotators' boundary maps, read from its ``.mat`` file.
    """
    from functools import partial

    from segany.datasets import Sample, files_by_stem, report_missing

    images_dir, truth_dir = folder / "images", folder / "groundTruth"
    if split:
        images_dir, truth_dir = images_dir / split, truth_dir / split
    if not images_dir.is_dir() or not truth_dir.is_dir():
        raise FileNotFoundError(f"expected the BSDS500 folders {images_dir} and {truth_dir}")
    truths = {path.relative_to(truth_dir).with_suffix("").as_posix(): path for path in sorted(truth_dir.rglob("*.mat"))}
    images = files_by_stem(images_dir)
    report_missing([stem for stem in images if stem not in truths], f"images have no .mat ground truth in {truth_dir}")
    return [Sample(stem, path, partial(read_bsds_targets, truths[stem])) for stem, path in images.items() if stem in truths]


def read_bsds_targets(path: Path) -> tuple[list[np.ndarray], None]:
    return read_bsds_boundaries(path), None


def is_bsds_folder(folder: Path) -> bool:
    return (folder / "images").is_dir() and (folder / "groundTruth").is_dir()


def evaluate_image(
    detector: Callable[[np.ndarray], np.ndarray], image: np.ndarray, truths: list[np.ndarray], levels: np.ndarray,
    edge_map_path: os.PathLike | None = None,
) -> dict:
    """One image's edge map (saved as a PNG when a path is given) and its counts at every threshold."""
    from segany.io import save_image_atomic

    edges = detector(image)
    if edges.shape != image.shape[:2]:
        raise ValueError(f"the edge map has shape {edges.shape}, the image {image.shape[:2]}")
    if edge_map_path is not None:
        save_image_atomic(np.round(np.clip(edges, 0, 1) * 255).astype(np.uint8), edge_map_path)
    return {"counts": image_counts(edges, truths, levels).tolist()}


def write_report(out: Path, dataset, settings: dict, metrics: dict, records: dict[str, list[dict]],
                 truths_of: Callable, examples: int) -> Path:
    """``edges.json``, the precision-recall chart, best/worst images (edges at the ODS threshold), ``edges.md``."""
    from segany.eval.report import (
        Example, best_and_worst, example_grid, image_link, markdown_table, plot_precision_recall, safe_file_name,
        write_markdown, write_metrics,
    )
    from segany.io import read_image

    write_metrics(out / "edges.json", {"protocol": "edges", "settings": settings, "models": metrics})
    report = out / "edges.md"
    chart = out / "edges-pr.png"
    plot_precision_recall({name: (m["recall"], m["precision"]) for name, m in metrics.items()}, chart,
                          "edge detection: precision against recall")
    rows = [[name, m["images"], m["ods"], m["ois"], m["ap"], m["ods_threshold"]] for name, m in metrics.items()]
    sections = [
        ("Dataset", f"`{settings['dataset']}`: {len(dataset)} images, boundaries matched within "
                    f"{MAX_DISTANCE} of the image diagonal."),
        ("Metrics", markdown_table(["model", "images", "ODS", "OIS", "AP", "ODS threshold"], rows)),
        ("Precision and recall", image_link(chart, report, "precision-recall curves")),
    ]
    samples = {str(sample.id): sample for sample in dataset}
    levels = thresholds(settings["thresholds"])
    for name, model_records in records.items() if examples else ():
        scored = [(record["image"], best_f(levels, *recall_precision(np.array(record["counts"])))["f"])
                  for record in model_records]
        best, worst = best_and_worst(scored, key=lambda item: item[1], count=examples)
        pictures = []
        for image_id, f in best + worst:
            sample = samples[image_id]
            edges = read_image(edge_map_file(out, name, image_id))[..., 0] / 255.0
            detected = thin(edges >= metrics[name]["ods_threshold"])
            truths = truths_of(sample)
            truth = np.logical_or.reduce(truths) if truths else np.zeros(edges.shape, bool)
            thick = np.ones((2, 2), np.uint8)
            shown = [cv2.dilate(m.astype(np.uint8), thick).astype(bool) for m in (truth, detected)]
            pictures.append(Example(sample.read_image(), shown, f"{image_id}: F {f:.3f} (truth, edges)"))
        grid = out / f"edges-examples-{safe_file_name(name)}.png"
        example_grid(pictures, grid, f"{name}: best and worst images (best F per image)")
        sections.append((f"Examples: {name}", image_link(grid, report, f"{name} examples")))
    write_markdown(report, "Edge detection (BSDS500 protocol)", sections)
    return report


def edge_map_file(out: Path, model: str, image_id: str) -> Path:
    """Where a model's edge map of an image is saved (8-bit PNG, 255 = strongest)."""
    from segany.eval.report import safe_file_name

    return out / "edge-maps" / safe_file_name(model) / f"{image_id}.png"
