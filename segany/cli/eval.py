"""``segany eval points|edges|proposals|boxes``: the paper's zero-shot evaluations on any dataset.

Each protocol evaluates one or several models on a dataset that :func:`segany.datasets.open_dataset`
reads, and writes ``<protocol>.json`` (metrics per model), ``<protocol>.md`` (a report with
plots and best/worst examples) and resumable per-image records under ``--out``. Re-running
the same command skips the images already done; image embeddings are cached on disk.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

HELP = "zero-shot evaluations: points (single point, box, clicks curve), edges, proposals, boxes"

PROTOCOLS = {
    "points": "single centre point (most confident and oracle of 3 masks), box prompt, clicks curve with NoC@85/90",
    "edges": "BSDS500 edge detection from a 16x16 point grid: ODS, OIS, AP",
    "proposals": "automatic masks as object proposals: AR@100, AR@1000, small/medium/large (pycocotools)",
    "boxes": "masks from ground-truth or detector boxes: COCO mask AP (pycocotools)",
}
BASELINES = ("grabcut",)


@dataclass
class ModelSpec:
    """A model to evaluate: its name in the reports, how to build it, and what identifies its weights."""

    name: str
    build: Callable[[], Any]
    identity: dict


def add_arguments(parser: argparse.ArgumentParser) -> None:
    protocols = parser.add_subparsers(dest="protocol", metavar="PROTOCOL")
    protocols.required = True
    for name, text in PROTOCOLS.items():
        sub = protocols.add_parser(name, help=text, description=text)
        add_common_arguments(sub)
        PROTOCOL_ARGUMENTS[name](sub)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", type=Path,
                        help="COCO .json, SA-1B folder, img/+gt/ style mask folder, or annotation .sqlite")
    parser.add_argument("--images-dir", type=Path, help="where the dataset's images are, if not beside the annotations")
    parser.add_argument("--out", type=Path, required=True, help="output folder (metrics, report, resumable records)")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="[NAME=]PATH",
                        help="model weights to evaluate; repeat to compare models (default: the embedded model)")
    parser.add_argument("--model-type", default="auto", help="vit_h | vit_l | vit_b | tiny | lite | auto (default: auto)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N images")
    parser.add_argument("--examples", type=int, default=4, help="best and worst examples shown per model (default 4)")
    parser.add_argument("--cache-dir", type=Path, help="image-embedding cache (default: OUT/embeddings)")
    parser.add_argument("--no-cache", action="store_true", help="do not cache image embeddings")


def add_points_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clicks", type=int, default=20, help="clicks per object in the clicks curve; NoC cap (default 20)")
    parser.add_argument("--baseline", action="append", default=[], choices=BASELINES,
                        help="also evaluate a classic baseline seeded with the same clicks and boxes")


def add_edges_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--points-per-side", type=int, default=16, help="prompt grid side (default 16)")
    parser.add_argument("--thresholds", type=int, default=99, help="edge-map thresholds for the PR curve (default 99)")
    parser.add_argument("--nms-thresh", type=float, default=0.7, help="box IoU above which duplicate masks go (default 0.7)")
    parser.add_argument("--split", help="with a BSDS500 data folder (images/ + groundTruth/): the split, e.g. test")


def add_proposals_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--points-per-side", type=int, default=32, help="generator grid side (default 32)")
    parser.add_argument("--pred-iou-thresh", type=float,
                        help="generator confidence filter (default 0.88, or the value saved with the weights)")
    parser.add_argument("--stability-score-thresh", type=float,
                        help="generator stability filter (default 0.95, or the value saved with the weights)")
    parser.add_argument("--box-nms-thresh", type=float, default=0.7, help="generator duplicate removal (default 0.7)")
    parser.add_argument("--crop-n-layers", type=int, default=0, help="generator crop layers (default 0)")


def add_boxes_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--detections", type=Path,
                        help="a detector's COCO results JSON (image_id, category_id, bbox, score); default: ground-truth boxes")


def run(args: argparse.Namespace) -> int:
    check_common(args)
    specs = model_specs(args)
    args.out.mkdir(parents=True, exist_ok=True)
    report = PROTOCOL_RUNNERS[args.protocol](args, specs)
    print(f"segany eval {args.protocol}: report in {report}")
    return 0


def open_samples(args: argparse.Namespace, samples=None):
    """The dataset the arguments name (or ``samples`` already found), cut to --limit; never empty."""
    from segany.datasets import open_dataset

    dataset = samples if samples is not None else open_dataset(args.dataset, args.images_dir)
    if args.limit is not None:
        dataset = dataset[: args.limit]
    if len(dataset) == 0:
        raise ValueError(f"dataset {args.dataset} holds no images to evaluate")
    return dataset


def check_common(args: argparse.Namespace) -> None:
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out must be a folder, but {args.out} is a file")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {args.limit}")
    if args.examples < 0:
        raise ValueError(f"--examples must be 0 or more, got {args.examples}")


def model_specs(args: argparse.Namespace) -> list[ModelSpec]:
    """The models named by --checkpoint (NAME=PATH or PATH), or the embedded default model."""
    from segany import build_sam, sam_model_registry
    from segany.build import EMBEDDED_WEIGHTS

    if not args.checkpoint:
        if "default" not in sam_model_registry or not EMBEDDED_WEIGHTS.is_file():
            raise ValueError("no --checkpoint given and no embedded default model in this version of segany: "
                             "pass --checkpoint PATH")
        stat = EMBEDDED_WEIGHTS.stat()
        identity = {"model": "default", "size": stat.st_size, "mtime": stat.st_mtime}
        return [ModelSpec("default", lambda: build_sam("default", device=args.device), identity)]
    specs = []
    for text in args.checkpoint:
        name, separator, path = text.partition("=")
        if not separator or Path(text).exists():
            name, path = Path(text).stem, text
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        stat = path.stat()
        identity = {"checkpoint": str(path.resolve()), "size": stat.st_size, "mtime": stat.st_mtime,
                    "model_type": args.model_type}
        specs.append(ModelSpec(name, lambda path=path: build_sam(args.model_type, path, device=args.device), identity))
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"two --checkpoint models share a name ({', '.join(names)}): name them with NAME=PATH")
    return specs


def embedding_cache(args: argparse.Namespace):
    from segany.embedding_cache import EmbeddingCache

    return None if args.no_cache else EmbeddingCache(args.cache_dir or args.out / "embeddings")


def base_settings(args: argparse.Namespace) -> dict:
    """What every protocol's results depend on besides the model."""
    return {"dataset": str(args.dataset.resolve()), "images_dir": str(args.images_dir) if args.images_dir else None}


# -- points --------------------------------------------------------------------------------


def run_points(args: argparse.Namespace, specs: list[ModelSpec]) -> Path:
    from functools import partial

    from segany.eval import points
    from segany.eval.records import evaluate_dataset, record_log
    from segany.eval.segmenters import GrabCutSegmenter, SamSegmenter

    if args.clicks < 1:
        raise ValueError(f"--clicks must be at least 1, got {args.clicks}")
    dataset = open_samples(args)
    cache = embedding_cache(args)
    makers = [(spec.name, spec.identity, lambda spec=spec: SamSegmenter(spec.build(), spec.name, cache)) for spec in specs]
    makers += [(name, {"baseline": name}, GrabCutSegmenter) for name in args.baseline]
    settings = {**base_settings(args), "clicks": args.clicks}
    records, metrics = {}, {}
    for name, identity, make in makers:
        segmenter = make()
        log = record_log(args.out, "points", name, {**settings, **identity})
        evaluate = partial(points.evaluate_image, segmenter, clicks=args.clicks)
        records[name] = evaluate_dataset(dataset, log, evaluate, f"points: {name}")
        metrics[name] = points.summarize(records[name], args.clicks)
    return points.write_report(args.out, dataset, settings, metrics, records, args.examples)


# -- edges, proposals, boxes ---------------------------------------------------------------


def run_edges(args: argparse.Namespace, specs: list[ModelSpec]) -> Path:
    from segany.eval import edges
    from segany.eval.records import evaluate_dataset, record_log
    from segany.eval.segmenters import SamSegmenter

    if args.thresholds < 1:
        raise ValueError(f"--thresholds must be at least 1, got {args.thresholds}")
    if args.points_per_side < 1:
        raise ValueError(f"--points-per-side must be at least 1, got {args.points_per_side}")
    bsds = edges.is_bsds_folder(args.dataset) or args.split is not None
    dataset = open_samples(args, edges.bsds_samples(args.dataset, args.split) if bsds else None)
    truths_of = edges.annotator_boundaries if bsds else edges.object_boundaries
    levels = edges.thresholds(args.thresholds)
    settings = {**base_settings(args), "split": args.split, "thresholds": args.thresholds,
                "points_per_side": args.points_per_side, "nms_thresh": args.nms_thresh}
    cache = embedding_cache(args)
    records, metrics = {}, {}
    for spec in specs:
        detector = edges.SamEdgeDetector(SamSegmenter(spec.build(), spec.name, cache), args.points_per_side,
                                         args.nms_thresh)

        def evaluate(sample, image, name=spec.name, detector=detector):
            edge_map = edges.edge_map_file(args.out, name, str(sample.id))
            return edges.evaluate_image(detector, image, truths_of(sample), levels, edge_map)

        log = record_log(args.out, "edges", spec.name, {**settings, **spec.identity})
        records[spec.name] = evaluate_dataset(dataset, log, evaluate, f"edges: {spec.name}")
        metrics[spec.name] = edges.summarize(levels, [record["counts"] for record in records[spec.name]])
    return edges.write_report(args.out, dataset, settings, metrics, records, truths_of, args.examples)


def run_proposals(args: argparse.Namespace, specs: list[ModelSpec]) -> Path:
    from segany.automask import SamAutomaticMaskGenerator
    from segany.eval import coco_scores, proposals
    from segany.eval.records import evaluate_dataset, record_log

    dataset = open_samples(args)
    options = {"points_per_side": args.points_per_side, "pred_iou_thresh": args.pred_iou_thresh,
               "stability_score_thresh": args.stability_score_thresh, "box_nms_thresh": args.box_nms_thresh,
               "crop_n_layers": args.crop_n_layers}
    settings = {**base_settings(args), **options}
    records, metrics = {}, {}
    for spec in specs:
        generator = SamAutomaticMaskGenerator(spec.build(), output_mode="coco_rle", **options)

        def evaluate(sample, image, generator=generator):
            return proposals.evaluate_image(generator.generate, sample, image)

        log = record_log(args.out, "proposals", spec.name, {**settings, **spec.identity})
        records[spec.name] = evaluate_dataset(dataset, log, evaluate, f"proposals: {spec.name}")
        metrics[spec.name] = proposals.summarize(records[spec.name])
    return coco_scores.write_report(args.out, "proposals", "Object proposals (average recall)", dataset, settings,
                                    metrics, records, proposals.COLUMNS, args.examples)


def run_boxes(args: argparse.Namespace, specs: list[ModelSpec]) -> Path:
    from segany.eval import boxes, coco_scores
    from segany.eval.records import evaluate_dataset, record_log
    from segany.eval.segmenters import SamSegmenter

    dataset = open_samples(args)
    detections = boxes.read_detections(args.detections) if args.detections else None
    settings = {**base_settings(args), "detections": str(args.detections.resolve()) if args.detections else None}
    if detections is not None:
        known = {str(sample.id) for sample in dataset}
        if not known & detections.keys():
            raise ValueError(f"no image_id in {args.detections} names an image of the dataset {args.dataset}")
    cache = embedding_cache(args)
    records, metrics = {}, {}
    for spec in specs:
        segmenter = SamSegmenter(spec.build(), spec.name, cache)

        def evaluate(sample, image, segmenter=segmenter):
            prompts = detections.get(str(sample.id), []) if detections is not None else boxes.ground_truth_boxes(sample)
            return boxes.evaluate_image(segmenter, sample, image, prompts)

        log = record_log(args.out, "boxes", spec.name, {**settings, **spec.identity})
        records[spec.name] = evaluate_dataset(dataset, log, evaluate, f"boxes: {spec.name}")
        metrics[spec.name] = boxes.summarize(records[spec.name])
    return coco_scores.write_report(args.out, "boxes", "Instance masks from boxes (COCO mask AP)", dataset, settings,
                                    metrics, records, boxes.COLUMNS, args.examples)


PROTOCOL_ARGUMENTS = {
    "points": add_points_arguments,
    "edges": add_edges_arguments,
    "proposals": add_proposals_arguments,
    "boxes": add_boxes_arguments,
}
PROTOCOL_RUNNERS = {"points": run_points, "edges": run_edges, "proposals": run_proposals, "boxes": run_boxes}
