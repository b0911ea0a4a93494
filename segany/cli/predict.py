"""``segany predict``: segment one image from point, box and text prompts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from segany.text import OpenClipEmbedder

HELP = "segment one image from points, a box and/or text; writes the best mask (PNG), scores (JSON) and an overlay"
DEFAULT_CLIP_MODEL = "ViT-L-14-336"  # the SAM paper's CLIP


def parse_point(text: str) -> tuple[float, float, int]:
    """'X,Y' or 'X,Y,LABEL' (label 1 foreground, 0 background)."""
    parts = text.split(",")
    try:
        if len(parts) == 2:
            return float(parts[0]), float(parts[1]), 1
        if len(parts) == 3:
            return float(parts[0]), float(parts[1]), int(parts[2])
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"expected X,Y or X,Y,LABEL, got {text!r}")


def parse_box(text: str) -> tuple[float, float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"expected X0,Y0,X1,Y1, got {text!r}")
    return values


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--checkpoint / --model-type / --device, shared by the commands that run a model."""
    parser.add_argument("--checkpoint", type=Path, help="model weights (.pth or .safetensors); default: embedded model")
    parser.add_argument("--model-type", default="auto", help="vit_h | vit_l | vit_b | tiny | auto (default: auto)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")


def load_model_from_args(args: argparse.Namespace):
    """Build the model the flags name; without a checkpoint, the embedded default model."""
    import sys

    from segany import build_sam

    if args.checkpoint is None and args.model_type in ("auto", "default"):
        print("segany: no --checkpoint given, using the embedded default model", file=sys.stderr)
        return build_sam("default", device=args.device)
    name = "auto" if args.model_type == "default" else args.model_type
    return build_sam(name, args.checkpoint, device=args.device)


def add_clip_arguments(parser: argparse.ArgumentParser, purpose: str) -> None:
    """--clip-checkpoint / --clip-model, shared by the commands that take text prompts."""
    parser.add_argument("--clip-checkpoint", type=Path, help=f"local open_clip weights file, {purpose}")
    parser.add_argument("--clip-model", default=DEFAULT_CLIP_MODEL,
                        help=f"open_clip architecture of --clip-checkpoint (default: {DEFAULT_CLIP_MODEL})")


def clip_from_args(args: argparse.Namespace) -> OpenClipEmbedder:
    """The CLIP text encoder the flags name (``segany.text.OpenClipEmbedder``), on the model's device."""
    from segany.text import OpenClipEmbedder

    return OpenClipEmbedder(args.clip_model, args.clip_checkpoint, device=args.device)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", type=Path, help="image file")
    add_model_arguments(parser)
    parser.add_argument("--point", type=parse_point, action="append", default=[], metavar="X,Y[,LABEL]",
                        help="a point prompt in pixels; label 1 foreground (default) or 0 background; repeatable")
    parser.add_argument("--box", type=parse_box, metavar="X0,Y0,X1,Y1", help="a box prompt in pixels")
    parser.add_argument("--text", help="a text prompt, e.g. 'a wheel' (needs a model trained with text prompts)")
    add_clip_arguments(parser, "for --text")
    parser.add_argument("--multimask", action="store_true", help="predict 3 candidate masks and keep the best-scored")
    parser.add_argument("--out", type=Path, required=True, help="output mask PNG (scores go to the same name .json)")
    parser.add_argument("--overlay", type=Path, help="also write the mask over the image as a PNG/JPEG")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from segany import SamPredictor
    from segany.io import atomic_write, read_image, save_image_atomic
    from segany.visualize import overlay_masks

    if not args.point and args.box is None and args.text is None:
        raise ValueError("no prompt given: pass --point X,Y (repeatable), --box X0,Y0,X1,Y1 and/or --text TEXT")
    if args.out.suffix.lower() != ".png":
        raise ValueError(f"--out must be a .png file, got {args.out}")
    if args.text is not None and args.clip_checkpoint is None:
        raise ValueError("--text needs CLIP weights: pass --clip-checkpoint PATH (a local open_clip checkpoint "
                         "of --clip-model); segany never downloads them")
    image = read_image(args.image)
    model = load_model_from_args(args)
    text_encoder = clip_from_args(args) if args.text is not None else None
    predictor = SamPredictor(model, text_encoder)
    predictor.set_image(image)
    points = np.array([p[:2] for p in args.point]) if args.point else None
    labels = np.array([p[2] for p in args.point]) if args.point else None
    box = np.array(args.box) if args.box is not None else None
    masks, scores, _ = predictor.predict(points, labels, box, multimask_output=args.multimask, text=args.text)
    best = int(np.argmax(scores))
    save_image_atomic(masks[best], args.out)
    report = {
        "image": str(args.image),
        "mask": str(args.out),
        "score": float(scores[best]),
        "scores": [float(s) for s in scores],
        "area": int(masks[best].sum()),
    }
    if args.text is not None:
        report["text"] = args.text
    with atomic_write(args.out.with_suffix(".json"), "w") as stream:
        json.dump(report, stream, indent=2)
    if args.overlay:
        save_image_atomic(overlay_masks(image, [masks[best]], points=points, labels=labels, box=box), args.overlay)
    print(json.dumps(report))
    return 0
