"""``segany auto``: annotate whole image collections automatically (the data engine's last stage).

Images and folders go in; out comes SA-1B layout (one JSON per image) or one COCO instances
JSON, plus optional overlay previews. Every file is written atomically and an image counts as
done once its JSON exists, so an interrupted run (Ctrl-C, kill -9) re-run with the same
arguments picks up where it stopped. Under ``torchrun --nproc_per_node N`` (and multi-node)
each worker takes its share of the images.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from segany.cli.predict import add_model_arguments, load_model_from_args

if TYPE_CHECKING:
    import numpy as np

HELP = "generate every mask of images/folders (SA-1B JSON per image or one COCO JSON); resumable; torchrun shards it"

# The generator's options: flag -> (type, help). Unset flags keep the generator's defaults.
GENERATOR_OPTIONS = {
    "points_per_side": (int, "points per side of the prompt grid (default 32)"),
    "points_per_batch": (int, "points prompted and filtered together (default 64)"),
    "pred_iou_thresh": (float, "keep masks whose predicted IoU exceeds this (default 0.88, or the value saved with the weights)"),
    "stability_score_thresh": (float, "keep masks at least this stable (default 0.95, or the value saved with the weights)"),
    "stability_score_offset": (float, "logit offset used to measure stability (default 1.0, or the value saved with the weights)"),
    "box_nms_thresh": (float, "box IoU above which duplicates are removed within a crop (default 0.7)"),
    "crop_n_layers": (int, "layers of zoomed-in crops, 2^i x 2^i in layer i (default 0)"),
    "crop_nms_thresh": (float, "box IoU above which duplicates are removed across crops (default 0.7)"),
    "crop_overlap_ratio": (float, "overlap of neighbouring crops, as a fraction of the image (default 512/1500)"),
    "crop_n_points_downscale_factor": (int, "divide points per side by this in each crop layer (default 1)"),
    "min_mask_region_area": (int, "fill holes and drop islands smaller than this many pixels (default 0: off)"),
}
SETTINGS_FILE = "segany-auto.json"
COCO_FILE = "instances.json"
COCO_PARTS = ".parts"  # per-image results of a COCO run, merged at the end; kept for resuming
PREVIEWS = "previews"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", type=Path, metavar="INPUT",
                        help="image files and/or folders (searched recursively)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--format", choices=("sa1b", "coco"), default="sa1b",
                        help=f"sa1b: one JSON per image (default); coco: one COCO instances JSON, {COCO_FILE}")
    parser.add_argument("--preview", action="store_true", help=f"also write an overlay PNG per image under {PREVIEWS}/")
    add_model_arguments(parser)
    options = parser.add_argument_group("mask generation (as SamAutomaticMaskGenerator)")
    for name, (kind, text) in GENERATOR_OPTIONS.items():
        options.add_argument("--" + name.replace("_", "-"), type=kind, help=text)


def generator_settings(args: argparse.Namespace) -> dict:
    """The generator options given on the command line (the rest keep the generator's defaults)."""
    return {name: getattr(args, name) for name in GENERATOR_OPTIONS if getattr(args, name) is not None}


def relative_names(images: list[Path]) -> dict[Path, str]:
    """Each image's path below the images' common folder (how outputs and records name it)."""
    root = Path(os.path.commonpath([str(path.parent) for path in images]))
    return {path: path.relative_to(root).as_posix() for path in images}


def output_names(images: list[Path]) -> dict[Path, str]:
    """A unique output stem per image: its relative name without the suffix.

    Images that differ only by suffix (a.jpg, a.png) keep the suffix in their stem.
    """
    relative = relative_names(images)
    stems = {path: Path(name).with_suffix("").as_posix() for path, name in relative.items()}
    uses: dict[str, int] = {}
    for stem in stems.values():
        uses[stem] = uses.get(stem, 0) + 1
    return {path: stem if uses[stem] == 1 else relative[path] for path, stem in stems.items()}


class Layout:
    """Where each output of a run lives, and which images are already finished."""

    def __init__(self, out: Path, fmt: str, images: list[Path]) -> None:
        self.out = out
        self.records_dir = out / COCO_PARTS if fmt == "coco" else out
        self.names = output_names(images)
        self.file_names = relative_names(images)
        self.image_ids = {path: index + 1 for index, path in enumerate(images)}

    def records(self, image: Path) -> Path:
        return self.records_dir / f"{self.names[image]}.json"

    def preview_image(self, image: Path) -> Path:
        return self.out / PREVIEWS / f"{self.names[image]}.png"

    def finished(self, image: Path) -> bool:
        """Previews are written before the JSON, so an existing JSON means the image is done."""
        return self.records(image).exists()

    def remove_stale_temporaries(self) -> None:
        """Delete the temporary files a killed run left mid-write (``atomic_write``'s ``.NAME.*.part``)."""
        if self.out.is_dir():
            for path in self.out.rglob(".*.part"):
                path.unlink(missing_ok=True)


def check_settings(out: Path, settings: dict) -> bool:
    """Refuse to mix results made with different settings in ``out``; whether they are recorded yet."""
    path = out / SETTINGS_FILE
    if not path.exists():
        return False
    previous = json.loads(path.read_text())
    if previous != settings:
        changed = sorted(key for key in set(previous) | set(settings) if previous.get(key) != settings.get(key))
        raise ValueError(
            f"{out} holds results made with other settings ({', '.join(changed)} differ); "
            "re-run with the same arguments to resume, or choose another --out"
        )
    return True


def record_settings(out: Path, settings: dict) -> None:
    """Write the run's settings into ``out``, so that a re-run can tell it resumes the same job."""
    from segany.io import atomic_write

    with atomic_write(out / SETTINGS_FILE, "w") as stream:
        json.dump(settings, stream, indent=2, sort_keys=True)


def sa1b_annotations(records: list[dict]) -> list[dict]:
    """Generator records (coco_rle mode) as SA-1B annotations, numbered from 1 within the image."""
    return [{"id": index + 1, **record} for index, record in enumerate(records)]


def preview(image: np.ndarray, records: list[dict]) -> np.ndarray:
    """The masks blended over the image, largest first so that small ones stay visible."""
    from segany.masks import decode_rle
    from segany.visualize import overlay_masks

    ordered = sorted(records, key=lambda record: record["area"], reverse=True)
    return overlay_masks(image, [decode_rle(record["segmentation"]) for record in ordered])


@dataclass
class Outcome:
    """What one worker did: images annotated, masks written, and the images it could not read."""

    annotated: int = 0
    masks: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)


def annotate(
    args: argparse.Namespace, images: list[Path], layout: Layout, settings: dict, new_run: dict | None
) -> Outcome:
    """Annotate this worker's unfinished share of ``images``; ``new_run`` settings are recorded first."""
    import torch
    from tqdm import tqdm

    from segany import distributed
    from segany.annotations import write_sa1b_json
    from segany.automask import SamAutomaticMaskGenerator
    from segany.io import read_image, save_image_atomic

    outcome = Outcome()
    mine = distributed.shard(images)
    todo = [path for path in mine if not layout.finished(path)]
    if not todo:
        return outcome
    args.device = distributed.worker_device(args.device)
    torch.manual_seed(0)  # a model without a checkpoint ("tiny") is then the same on every worker
    model = load_model_from_args(args)
    generator = SamAutomaticMaskGenerator(model, output_mode="coco_rle", **settings)
    own = sorted(set(model.mask_generation_defaults) - set(settings))
    if own and distributed.is_main_process():
        shown = ", ".join(f"{name} {getattr(generator, name)}" for name in own)
        print(f"segany auto: the weights' own filters: {shown}", file=sys.stderr)
    if new_run is not None:
        record_settings(args.out, new_run)  # only now: the settings proved valid
    if len(todo) < len(mine) and distributed.is_main_process():
        print(f"segany auto: skipping {len(mine) - len(todo)} finished images", file=sys.stderr)
    bar = tqdm(todo, unit="image", desc="segany auto", disable=not distributed.is_main_process())
    for path in bar:
        try:
            image = read_image(path)
        except (ValueError, OSError) as error:
            outcome.failures.append((str(path), str(error)))
            bar.write(f"segany auto: skipped {path}: {error}", file=sys.stderr)
            continue
        records = generator.generate(image)
        if args.preview:
            save_image_atomic(preview(image, records), layout.preview_image(path))
        height, width = image.shape[:2]
        info = {
            "image_id": layout.image_ids[path], "width": width, "height": height, "file_name": layout.file_names[path]
        }
        write_sa1b_json(layout.records(path), info, sa1b_annotations(records))
        outcome.annotated += 1
        outcome.masks += len(records)
    return outcome


def write_coco(images: list[Path], layout: Layout) -> None:
    """Merge the finished images' per-image results into one COCO instances file."""
    from segany.annotations import coco_instances, read_sa1b_json, write_coco_json

    parts = [read_sa1b_json(layout.records(path)) for path in images if layout.finished(path)]
    coco = coco_instances([info for info, _ in parts], [annotations for _, annotations in parts], None)
    write_coco_json(layout.out / COCO_FILE, coco)


def run(args: argparse.Namespace) -> int:
    from segany import distributed
    from segany.io import list_images

    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out must be a folder, but {args.out} is a file")
    images = list_images(args.inputs)
    if not images:
        raise ValueError(f"no images found in {', '.join(map(str, args.inputs))} (looked for common image suffixes)")
    layout = Layout(args.out, args.format, images)
    settings = generator_settings(args)
    run_settings = {
        **settings,
        "checkpoint": str(args.checkpoint.resolve()) if args.checkpoint else None,
        "model_type": args.model_type,
        "format": args.format,
    }
    recorded = check_settings(args.out, run_settings)
    with distributed.process_group(args.device):
        if distributed.is_main_process():
            layout.remove_stale_temporaries()
        distributed.barrier()  # before any worker starts writing new ones
        outcome = annotate(args, images, layout, settings, None if recorded else run_settings)
        outcomes = distributed.gather_to_all(outcome)
        distributed.barrier()
    if not distributed.is_main_process():
        return 1 if any(outcome.failures for outcome in outcomes) else 0

    if args.format == "coco":
        write_coco(images, layout)
    finished = sum(layout.finished(path) for path in images)
    failures = [failure for outcome in outcomes for failure in outcome.failures]
    target = args.out / COCO_FILE if args.format == "coco" else args.out
    print(
        f"segany auto: {sum(o.annotated for o in outcomes)} images annotated now "
        f"({sum(o.masks for o in outcomes)} masks), {finished}/{len(images)} done, in {target}"
    )
    if failures:
        print(f"segany auto: {len(failures)} images could not be read:", file=sys.stderr)
        for path, reason in failures:
            print(f"  {path}: {reason}", file=sys.stderr)
        return 1
    return 0
