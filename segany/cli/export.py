"""``segany export onnx``: write the model as ONNX graphs for onnxruntime, browsers and other runtimes."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "export the model to ONNX: encoder.onnx and decoder.onnx (run them with segany.export.OnnxPredictor)"

FORMATS = ("onnx",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from segany.cli.predict import add_model_arguments

    parser.add_argument("format", choices=FORMATS, help="export format")
    add_model_arguments(parser)
    parser.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    parser.add_argument("--verify", action="store_true",
                        help="run both graphs in onnxruntime on random inputs and compare with PyTorch")


def run(args: argparse.Namespace) -> int:
    import json

    from segany.cli.predict import load_model_from_args
    from segany.export.onnx_export import compare_with_torch, export_onnx

    model = load_model_from_args(args)
    paths = export_onnx(model, args.out)
    report = {name: str(path) for name, path in paths.items()}
    if args.verify:
        report["max_abs_difference"] = compare_with_torch(model, args.out)
    print(json.dumps(report, indent=2))
    return 0
