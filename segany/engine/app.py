"""The annotation web app: a FastAPI server over the store and the model, and the page in ``web/``.

A person opens an image (its embedding is computed once, ahead of time where possible),
clicks, drags or, on a server started with CLIP, types what the object is; each prompt is
one small request answered by the mask decoder alone with three candidate masks as COCO
RLE; accepting one stores it. Every route validates its input and answers a malformed
request with a 4xx and a message.
"""

from __future__ import annotations

import io
import json
import sqlite3
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from fastapi import FastAPI, Path as PathParam, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, FiniteFloat

from segany.engine.model import LOGIT_SCALE, ModelChangedError, ModelService, image_key
from segany.engine.security import FrontDoor
from segany.engine.store import AnnotationStore, ConflictError, ImageRecord
from segany.io import IMAGE_SUFFIXES, list_images
from segany.masks import encode_rle

WEB_DIR = Path(__file__).resolve().parent / "web"
BROWSER_FORMATS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")  # sent as they are; others are converted to PNG
MAX_POINTS = 64
MAX_TEXT_CHARS = 200  # a phrase naming an object; CLIP reads at most 77 tokens of it
MAX_RLE_CHARS = 4_000_000
DEFAULT_MAX_BODY_BYTES = 16 * 2**20

ImageId = Annotated[int, PathParam(ge=1, le=2**62, description="image id")]
ObjectId = Annotated[int, PathParam(ge=1, le=2**62, description="object id")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Prompt(Strict):
    """Clicks and/or a box in pixels of the original image (labels 1 foreground, 0 background), and/or text."""

    points: list[tuple[FiniteFloat, FiniteFloat]] = Field(default_factory=list, max_length=MAX_POINTS)
    labels: list[Literal[0, 1]] = Field(default_factory=list, max_length=MAX_POINTS)
    box: tuple[FiniteFloat, FiniteFloat, FiniteFloat, FiniteFloat] | None = None
    text: str | None = Field(None, min_length=1, max_length=MAX_TEXT_CHARS)


class Rle(Strict):
    size: tuple[int, int]
    counts: str = Field(max_length=MAX_RLE_CHARS)


class MaskSource(Strict):
    """A mask given either as COCO RLE, or as the prompt and candidate index (0-2) that produced it.

    The page sends the prompt: the server recomputes the exact full-size mask, from the model
    revision the person saw (``model``), and stores the prompt with it.
    """

    rle: Rle | None = None
    prompts: Prompt | None = None
    candidate: int | None = Field(None, ge=0, le=2)
    model: str | None = Field(None, max_length=64)
    score: FiniteFloat | None = None


class NewObject(MaskSource):
    label: str = Field("", max_length=200)
    seconds: float = Field(0.0, ge=0, le=86400)


class ObjectEdit(MaskSource):
    version: int = Field(ge=1)
    label: str | None = Field(None, max_length=200)
    seconds: float = Field(0.0, ge=0, le=86400)


class DoneFlag(Strict):
    done: bool


def prompt_arrays(prompt: Prompt) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None, str | None]:
    """The prompt as the predictor takes it: points (N x 2), labels (N), box (4), text, each or None."""
    if len(prompt.points) != len(prompt.labels):
        raise ValueError(f"points and labels must have the same length, got {len(prompt.points)} and {len(prompt.labels)}")
    if not prompt.points and prompt.box is None and prompt.text is None:
        raise ValueError("the prompt is empty: give at least one point, a box or a text")
    points = np.array(prompt.points, dtype=float) if prompt.points else None
    labels = np.array(prompt.labels) if prompt.points else None
    box = np.array(prompt.box, dtype=float) if prompt.box is not None else None
    return points, labels, box, prompt.text


def create_app(
    images_dir: Path,
    db_path: Path,
    service: ModelService,
    *,
    token: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    prefetch: int = 2,
    watch_interval: float | None = 2.0,
) -> FrontDoor:
    """The ASGI app for one images folder and database (FastAPI behind :class:`FrontDoor`).

    ``service`` holds the model; ``prefetch`` next images are embedded ahead; the checkpoint
    is checked for changes every ``watch_interval`` seconds (None: only on request).
    """
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"images folder not found: {images_dir}")
    images_root = images_dir.resolve()
    found = list_images([images_root])
    if not found:
        raise ValueError(f"no images found in {images_dir} (looked for {' '.join(IMAGE_SUFFIXES)} files)")
    store = AnnotationStore(db_path, images_root)
    problems = store.add_images(found)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        service.start(watch_interval)
        yield
        service.stop()

    app = FastAPI(title="segany data engine", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    _add_error_handlers(app)

    def image_file(image: ImageRecord) -> Path:
        """The image's file, refusing anything that resolves outside the images folder (e.g. symlinks)."""
        path = (images_root / image.path).resolve()
        if not path.is_relative_to(images_root):
            raise KeyError(f"image {image.id} is not inside the images folder")
        if not path.is_file():
            raise KeyError(f"image file {image.path} is missing from the images folder")
        return path

    def image_and_key(image_id: int) -> tuple[ImageRecord, Path, str]:
        image = store.image(image_id)
        path = image_file(image)
        return image, path, image_key(image.path, path)

    def mask_fields(image_id: int, source: MaskSource) -> dict:
        """The store's mask fields (rle, score, prompts) from an RLE or from a prompt and candidate."""
        if source.rle is not None:
            if source.candidate is not None:
                raise ValueError("give the mask either as rle or as prompts + candidate, not both")
            return {"rle": source.rle.model_dump(), "score": source.score,
                    "prompts": source.prompts.model_dump() if source.prompts else None}
        if source.prompts is None or source.candidate is None:
            raise ValueError("a mask is needed: give rle, or prompts and candidate (0, 1 or 2)")
        _, path, key = image_and_key(image_id)
        mask, score = service.mask(path, key, *prompt_arrays(source.prompts), source.candidate, source.model)
        return {"rle": encode_rle(mask), "score": score, "prompts": source.prompts.model_dump()}

    # -- the page ------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")

    # -- images --------------------------------------------------------------------------

    @app.get("/api/health")
    def health() -> dict:
        return {"ok": True}

    @app.get("/api/images")
    def list_all() -> dict:
        return {"images": [image.to_json() for image in store.images()], "stats": store.stats(),
                "problems": problems}

    @app.get("/api/images/{image_id}")
    def one_image(image_id: ImageId) -> dict:
        image = store.image(image_id)
        return {"image": image.to_json(), "objects": [obj.to_json() for obj in store.objects(image_id)]}

    @app.get("/api/images/{image_id}/file")
    def image_bytes(image_id: ImageId) -> Response:
        path = image_file(store.image(image_id))
        if path.suffix.lower() in BROWSER_FORMATS:
            return FileResponse(path)
        from PIL import Image

        from segany.io import read_image

        buffer = io.BytesIO()
        Image.fromarray(read_image(path)).save(buffer, format="PNG")
        return Response(buffer.getvalue(), media_type="image/png")

    @app.post("/api/images/{image_id}/embedding")
    def embed(image_id: ImageId) -> dict:
        """Make the image ready for clicks, and start on the next images in the background."""
        image, path, key = image_and_key(image_id)
        start = time.perf_counter()
        service.predictor(path, key)
        following = [later for later in store.images() if later.path > image.path and not later.done][:prefetch]
        service.prefetch([(image_file(later), image_key(later.path, image_file(later))) for later in following])
        return {"ready": True, "seconds": time.perf_counter() - start}

    @app.post("/api/images/{image_id}/predict")
    def predict(image_id: ImageId, prompt: Prompt) -> Response:
        """The decoder's three candidates for one prompt: low-res logits and predicted IoUs.

        Only the decoder runs (and CLIP's text tower, for a phrase not seen lately). The body is
        the logits, 3 x rows x cols little-endian int16 in units of 1/``logit_scale`` (see
        ``Proposal``); the ``X-Proposal`` header holds the rest as JSON: scores, shape,
        input_size, upscale, logit_scale, model (revision), milliseconds.
        """
        start = time.perf_counter()
        arrays = prompt_arrays(prompt)
        _, path, key = image_and_key(image_id)
        proposal = service.propose(path, key, *arrays)
        about = {
            "scores": proposal.scores,
            "shape": list(proposal.logits.shape),
            "input_size": list(proposal.input_size),
            "upscale": proposal.upscale,
            "logit_scale": LOGIT_SCALE,
            "model": proposal.model.revision,
            "milliseconds": round((time.perf_counter() - start) * 1000, 2),
        }
        return Response(proposal.logits.tobytes(), media_type="application/octet-stream",
                        headers={"X-Proposal": json.dumps(about), "Cache-Control": "no-store"})

    @app.post("/api/images/{image_id}/done")
    def mark_done(image_id: ImageId, flag: DoneFlag) -> dict:
        return store.set_done(image_id, flag.done).to_json()

    @app.post("/api/images/{image_id}/prefill")
    def prefill(image_id: ImageId) -> dict:
        """Semi-automatic stage: add the automatic generator's confident masks that cover new ground."""
        from segany.engine.prefill import prefill_image

        image = store.image(image_id)
        added = prefill_image(store, service, image, image_file(image))
        return {"added": [obj.to_json() for obj in added], "image": store.image(image_id).to_json()}

    # -- objects -------------------------------------------------------------------------

    @app.post("/api/images/{image_id}/objects", status_code=201)
    def add_object(image_id: ImageId, new: NewObject) -> dict:
        fields = mask_fields(image_id, new)
        return store.add_object(image_id, **fields, label=new.label, source="manual", seconds=new.seconds).to_json()

    @app.patch("/api/objects/{object_id}")
    def edit_object(object_id: ObjectId, edit: ObjectEdit) -> dict:
        """Relabel and/or replace the mask; without a mask only the label and time change."""
        has_mask = edit.rle is not None or edit.prompts is not None or edit.candidate is not None
        fields = mask_fields(store.object(object_id).image_id, edit) if has_mask else {}
        return store.update_object(object_id, edit.version, **fields, label=edit.label, seconds=edit.seconds).to_json()

    @app.delete("/api/objects/{object_id}", status_code=204)
    def delete_object(object_id: ObjectId) -> Response:
        store.delete_object(object_id)
        return Response(status_code=204)

    # -- export and the model ------------------------------------------------------------

    @app.get("/api/export")
    def export(format: Literal["coco"] = Query("coco")) -> Response:
        """All accepted objects as one COCO instances file (download)."""
        from segany.engine.exchange import coco_bytes

        return Response(
            coco_bytes(store), media_type="application/json",
            headers={"Content-Disposition": 'attachment; filename="annotations.coco.json"'},
        )

    @app.get("/api/model")
    def model_info() -> dict:
        """The model in use; ``text_prompts`` tells the page whether to offer the text box."""
        return service.describe()

    @app.post("/api/model/reload")
    def reload_model() -> dict:
        """Pick up a new checkpoint now (the server also checks on its own every few seconds)."""
        reloaded = service.reload_if_changed()
        return {"reloaded": reloaded, **service.describe()}

    return FrontDoor(app, token=token, max_body_bytes=max_body_bytes)


def _add_error_handlers(app: FastAPI) -> None:
    """User errors become 4xx replies with the message; they never surface as a 500."""

    def handler(status: int):
        async def reply(_: Request, error: Exception) -> JSONResponse:
            message = error.args[0] if error.args else str(error)
            return JSONResponse({"detail": str(message)}, status_code=status)

        return reply

    async def invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
        """FastAPI's 422, without echoing the input back (it may not even be valid JSON, e.g. NaN)."""
        problems = [{"loc": list(item.get("loc", ())), "msg": item.get("msg", "invalid"), "type": item.get("type", "")}
                    for item in error.errors()]
        return JSONResponse({"detail": problems}, status_code=422)

    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(KeyError, handler(404))
    app.add_exception_handler(FileNotFoundError, handler(404))
    app.add_exception_handler(ConflictError, handler(409))
    app.add_exception_handler(ModelChangedError, handler(409))
    app.add_exception_handler(ValueError, handler(400))
    # the write lock waited for longer than its timeout: a momentary overload, not a bad request
    app.add_exception_handler(sqlite3.OperationalError, handler(503))
