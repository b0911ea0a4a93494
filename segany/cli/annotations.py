"""``segany annotations``: export, import and prefill the data engine's annotation database."""

from __future__ import annotations

import argparse
from pathlib import Path

from segany.cli.predict import add_model_arguments, load_model_from_args

HELP = "export (COCO / SA-1B), import, prefill and summarise an annotation database made by `segany serve`"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    export = actions.add_parser("export", help="write the accepted objects as COCO (one file) or SA-1B (a folder)")
    export.add_argument("--db", type=Path, required=True, help="annotation database")
    export.add_argument("--format", choices=["coco", "sa1b"], default="coco")
    export.add_argument("--out", type=Path, required=True, help="COCO: a .json file; SA-1B: a folder")

    load = actions.add_parser("import", help="add COCO or SA-1B masks to the images of the same names")
    load.add_argument("source_path", type=Path, metavar="PATH", help="COCO .json file, or folder of SA-1B .json files")
    load.add_argument("--db", type=Path, required=True, help="annotation database (created with --images-dir)")
    load.add_argument("--format", choices=["coco", "sa1b"], default="coco")
    load.add_argument("--images-dir", type=Path, help="images folder, needed when the database is new")
    load.add_argument("--as", dest="source", choices=["manual", "prefilled"],
                      help="record the masks as made by people (manual) or by a model, to review (prefilled); "
                           "default: manual for COCO, prefilled for SA-1B")

    prefill = actions.add_parser("prefill", help="semi-automatic stage for a whole folder: prefill confident masks "
                                                 "on every image not prefilled yet (resumable)")
    prefill.add_argument("--db", type=Path, required=True, help="annotation database")
    add_model_arguments(prefill)

    stats = actions.add_parser("stats", help="print progress: images done, objects by source, time spent")
    stats.add_argument("--db", type=Path, required=True, help="annotation database")


def open_store(args: argparse.Namespace, images_dir: Path | None = None):
    from segany.engine.store import AnnotationStore
    from segany.io import list_images

    if images_dir is None:
        return AnnotationStore(args.db)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"images folder not found: {images_dir}")
    store = AnnotationStore(args.db, images_dir)
    store.add_images(list_images([images_dir]))
    return store


def run(args: argparse.Namespace) -> int:
    import json

    from segany.engine import exchange

    if args.action == "export":
        store = open_store(args)
        if args.format == "coco":
            if args.out.suffix.lower() != ".json":
                raise ValueError(f"--out must be a .json file for COCO, got {args.out}")
            exchange.export_coco(store, args.out)
            print(f"wrote {args.out}")
        else:
            written = exchange.export_sa1b(store, args.out)
            print(f"wrote {len(written)} SA-1B image files under {args.out}")
    elif args.action == "import":
        if not args.source_path.exists():
            raise FileNotFoundError(f"{args.format} input not found: {args.source_path}")
        store = open_store(args, args.images_dir)
        if args.format == "coco":
            report = exchange.import_coco(store, args.source_path, args.source or "manual")
        else:
            report = exchange.import_sa1b(store, args.source_path, args.source or "prefilled")
        print(report.summary())
    elif args.action == "prefill":
        prefill_all(open_store(args), args)
    else:
        print(json.dumps(open_store(args).stats(), indent=2))
    return 0


def prefill_all(store, args: argparse.Namespace) -> None:
    """Prefill every image not prefilled yet; each image is committed as it finishes, so a rerun resumes."""
    import tempfile

    from tqdm import tqdm

    from segany.engine.model import ModelService
    from segany.engine.prefill import prefill_image

    todo = [image for image in store.images() if not image.prefilled]
    with tempfile.TemporaryDirectory() as cache:
        service = ModelService(lambda: load_model_from_args(args), args.checkpoint, Path(cache))
        added = 0
        for image in tqdm(todo, desc="prefilling", unit="image"):
            added += len(prefill_image(store, service, image, store.image_path(image)))
    print(f"prefilled {len(todo)} image(s) with {added} object(s)")
