"""``segany serve``: the data engine's annotation web app over a folder of images."""

from __future__ import annotations

import argparse
from pathlib import Path

from segany.cli.predict import add_clip_arguments, add_model_arguments, clip_from_args, load_model_from_args

HELP = "annotate a folder of images in the browser, with the model proposing masks as you click"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images_dir", type=Path, metavar="IMAGES_DIR", help="folder of images to annotate (recursive)")
    parser.add_argument("--db", type=Path, default=Path("annotations.sqlite"),
                        help="annotation database, created if missing (default: annotations.sqlite)")
    add_model_arguments(parser)
    add_clip_arguments(parser, "to also prompt with text (needs a model trained with text prompts)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; any other address requires a token)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    parser.add_argument("--token", help="access token; default: $SEGANY_TOKEN, or a random one when "
                                        "listening beyond this machine")
    parser.add_argument("--cache-dir", type=Path,
                        help="image embedding cache (default: DB name + '.embeddings' beside the database)")
    parser.add_argument("--prefetch", type=int, default=2, help="embed this many next images ahead (default: 2)")
    parser.add_argument("--max-request-mb", type=float, default=16.0, help="largest request body accepted (default: 16)")
    parser.add_argument("--watch-seconds", type=float, default=2.0,
                        help="how often to look for a new checkpoint file; 0 turns watching off (default: 2)")


def resolve_token(host: str, token: str | None) -> str | None:
    """The token to require: the one given, else $SEGANY_TOKEN, else a fresh one if the host is not loopback."""
    import os
    import secrets

    from segany.engine.security import is_loopback

    token = token or os.environ.get("SEGANY_TOKEN") or None
    if token is None and not is_loopback(host):
        token = secrets.token_urlsafe(24)
    if token is not None and len(token) < 16:
        raise ValueError("--token must be at least 16 characters long")
    return token


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from segany.engine.app import create_app
    from segany.engine.model import ModelService

    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be between 1 and 65535, got {args.port}")
    if args.prefetch < 0:
        raise ValueError(f"--prefetch must be 0 or more, got {args.prefetch}")
    if args.max_request_mb <= 0:
        raise ValueError(f"--max-request-mb must be positive, got {args.max_request_mb}")
    if args.checkpoint is not None and not args.checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint not found: {args.checkpoint}")
    if not args.images_dir.is_dir():
        raise FileNotFoundError(f"images folder not found: {args.images_dir}")
    token = resolve_token(args.host, args.token)
    cache_dir = args.cache_dir or args.db.with_name(args.db.name + ".embeddings")
    text_encoder = clip_from_args(args) if args.clip_checkpoint is not None else None
    service = ModelService(lambda: load_model_from_args(args), args.checkpoint, cache_dir, text_encoder=text_encoder)
    app = create_app(
        args.images_dir, args.db, service, token=token, max_body_bytes=int(args.max_request_mb * 2**20),
        prefetch=args.prefetch, watch_interval=args.watch_seconds or None,
    )
    shown_host = f"[{args.host}]" if ":" in args.host else args.host
    address = f"http://{shown_host}:{args.port}/" + (f"?token={token}" if token else "")
    print(f"segany serve: {args.images_dir} -> {args.db}; open {address}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
