"""``segany demo``: segment a sample photo with the embedded model, no download, no arguments."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "segment a bundled sample photo (or --image) from one click with the embedded model; writes an overlay PNG"

SAMPLE = Path(__file__).resolve().parents[1] / "assets" / "dog.jpg"
SAMPLE_POINT = (200.0, 420.0)  # on the dog's body


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from segany.cli.predict import parse_point

    parser.add_argument("--image", type=Path, default=SAMPLE, help="image to segment (default: a bundled photo)")
    parser.add_argument("--point", type=parse_point, help="click X,Y in pixels (default: the image centre, "
                        "or the dog in the bundled photo)")
    parser.add_argument("--out", type=Path, default=Path("segany-demo.png"), help="overlay PNG to write")
    parser.add_argument("--checkpoint", type=Path, help="use these weights instead of the embedded model")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from segany import SamPredictor, build_sam
    from segany.io import read_image, save_image_atomic
    from segany.visualize import overlay_masks

    image = read_image(args.image)
    if args.point is not None:
        x, y, label = args.point
    elif args.image == SAMPLE:
        (x, y), label = SAMPLE_POINT, 1
    else:
        (x, y), label = (image.shape[1] / 2, image.shape[0] / 2), 1
    model = build_sam("default", args.checkpoint)
    predictor = SamPredictor(model)
    predictor.set_image(image)
    points, labels = np.array([[x, y]]), np.array([label])
    masks, scores, _ = predictor.predict(points, labels, multimask_output=True)
    best = int(np.argmax(scores))
    save_image_atomic(overlay_masks(image, [masks[best]], points=points, labels=labels), args.out)
    source = "embedded model" if args.checkpoint is None else str(args.checkpoint)
    print(f"{args.out}  score {scores[best]:.3f}  area {int(masks[best].sum())} px  "
          f"({args.image.name}, click {x:.0f},{y:.0f}, {source})")
    return 0
