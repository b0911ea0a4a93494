"""Fixtures for the data engine: tiny random checkpoints, a folder of small images, an app client, a server."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

import segany
from segany.text import PromptEmbedder

REPO = Path(__file__).resolve().parents[2]
SEGANY_CLI = ("-m", "segany")  # how ServerProcess starts the command line


def make_images(folder: Path, seed: int = 0) -> Path:
    """Three small photos-like images, one in a sub-folder, of different sizes."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sub").mkdir(exist_ok=True)
    for name, (height, width) in {"a.png": (60, 80), "b.jpg": (72, 48), "sub/c.png": (50, 50)}.items():
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        pixels[height // 4: height // 2, width // 4: width // 2] = (250, 40, 40)  # something to click on
        Image.fromarray(pixels).save(folder / name)
    return folder


@pytest.fixture
def images_dir(tmp_path) -> Path:
    return make_images(tmp_path / "images")


@pytest.fixture(scope="session")
def text_checkpoint(tmp_path_factory) -> Path:
    """A tiny SAM with a text projection for the tiny CLIP's width (seeded random weights)."""
    from tiny_clip import WIDTH

    torch.manual_seed(0)
    model = segany.build_sam("tiny", text_embed_dim=WIDTH)
    return segany.save_sam(model, tmp_path_factory.mktemp("weights") / "tiny_text.safetensors")


def tiny_service(checkpoint: Path, cache: Path, text_encoder: PromptEmbedder | None = None):
    from segany.engine.model import ModelService

    return ModelService(lambda: segany.build_sam("auto", checkpoint), checkpoint, cache, text_encoder=text_encoder)


@pytest.fixture
def make_client(tmp_path, images_dir, tiny_checkpoint):
    """Build an app over ``images_dir`` with the tiny model; returns a started TestClient."""
    from fastapi.testclient import TestClient

    from segany.engine.app import create_app

    clients = []

    def build(checkpoint: Path = tiny_checkpoint, base_url: str = "http://127.0.0.1",
              text_encoder: PromptEmbedder | None = None, **options):
        service = tiny_service(checkpoint, tmp_path / "cache", text_encoder)
        app = create_app(images_dir, tmp_path / "db.sqlite", service, **options)
        client = TestClient(app, base_url=base_url)
        client.__enter__()
        client.service = service
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client):
    return make_client()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServerProcess:
    """``segany serve`` in a subprocess on a free loopback port.

    ``cli`` is what follows ``python`` to run the segany command line (e.g. ``-c CODE ARGS``
    to prepare the process first).
    """

    def __init__(self, images: Path, db: Path, checkpoint: Path, *extra: str, cli: Sequence[str] = SEGANY_CLI) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, *cli, "serve", str(images), "--db", str(db), "--checkpoint", str(checkpoint),
             "--port", str(self.port), *extra],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"segany serve exited: {self.process.stdout.read()}")
            try:
                if httpx.get(f"{self.url}/api/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("segany serve did not start within 60 s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stdout.close()


@pytest.fixture
def server(tmp_path, images_dir, tiny_checkpoint):
    started = []

    def start(*extra: str, checkpoint: Path = tiny_checkpoint, cli: Sequence[str] = SEGANY_CLI) -> ServerProcess:
        process = ServerProcess(images_dir, tmp_path / "db.sqlite", checkpoint, *extra, cli=cli)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
