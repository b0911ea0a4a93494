"""The model behind the annotation app: embeddings computed once, clicks answered by the decoder alone.

Each image's embedding is computed once per image encoder and kept on disk (the embedding
cache, one folder per encoder, so fine-tuning only the decoder keeps every embedding valid),
in memory for the few images in use, and computed ahead for the images a person is about to
open. The checkpoint file is watched: when training writes a
new one, it is loaded beside the old, then swapped in between two requests, so the loop
"annotate, retrain, annotate with the better model" needs no restart. With a CLIP text
encoder (and a model trained with text prompts), a phrase is a prompt too.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch

    from segany.text import PromptEmbedder

log = logging.getLogger("segany.engine")

LOGIT_SCALE = 1024  # logits are sent as int16 in units of 1/1024: [-32, 32] at a resolution far below any boundary
RECENT_TEXTS = 64  # phrases whose CLIP embeddings are kept in memory


@dataclass(frozen=True)
class LoadedModel:
    """One loaded checkpoint and what identifies it (the embedding cache is keyed by ``fingerprint``)."""

    sam: object  # segany.Sam; typed loosely to keep torch out of module import
    fingerprint: str  # digest of the image encoder's weights: embeddings depend on nothing else
    checkpoint: Path | None
    stamp: tuple[int, int] | None  # (size, mtime_ns) of the checkpoint file when it was read
    loaded_at: float = field(default_factory=time.time)

    @property
    def revision(self) -> str:
        """Identifies the whole model (a decoder-only fine-tune keeps the fingerprint, not the revision)."""
        return hashlib.sha1(f"{self.fingerprint}|{self.stamp}".encode()).hexdigest()[:16]

    def describe(self) -> dict:
        return {
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            "fingerprint": self.fingerprint,
            "revision": self.revision,
            "loaded_at": self.loaded_at,
            "image_size": self.sam.image_encoder.img_size,
        }


@dataclass(frozen=True)
class Proposal:
    """The decoder's answer to one prompt, compact enough to send on every click.

    ``logits`` holds the three candidates' low-res logits (3 x h x w) as little-endian int16
    in units of ``1 / LOGIT_SCALE``, cropped to the rows and columns that cover the image.
    The page upscales them as the predictor does (by ``upscale`` to the resized image of
    ``input_size``, then to the image) and thresholds at zero; accepting a candidate
    recomputes its exact full-size mask on the server.
    """

    logits: np.ndarray
    input_size: tuple[int, int]
    upscale: int
    scores: list[float]
    model: LoadedModel


class ModelChangedError(ValueError):
    """The model changed between showing a candidate and accepting it."""


class RecentTexts:
    """A text encoder that remembers the embeddings of the last ``size`` phrases it was asked for.

    People type the same few names ("car", "person") on image after image, and the CLIP text
    tower costs more than the mask decoder: repeated phrases skip it. It is a ``PromptEmbedder``
    itself, so predictors take it in place of the encoder. The embeddings returned are shared
    between callers, who must not change them in place (the predictor does not).
    """

    def __init__(self, encoder: PromptEmbedder, size: int = RECENT_TEXTS) -> None:
        self.encoder = encoder
        self.embed_dim = encoder.embed_dim
        self.fingerprint = encoder.fingerprint
        self.size = size
        self._lock = threading.Lock()
        self._recent: OrderedDict[tuple[str, ...], torch.Tensor] = OrderedDict()

    def embed_images(self, crops: Sequence[np.ndarray]) -> torch.Tensor:
        return self.encoder.embed_images(crops)

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        key = tuple(texts)
        with self._lock:
            found = self._recent.get(key)
            if found is not None:
                self._recent.move_to_end(key)
                return found
        embeddings = self.encoder.embed_texts(texts)
        with self._lock:
            self._recent[key] = embeddings
            while len(self._recent) > self.size:
                self._recent.popitem(last=False)
        return embeddings


def file_stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def image_key(relative_path: str, path: Path) -> str:
    """Cache key of an image file: its name in the folder and its size and modification time."""
    size, mtime = file_stamp(path)
    return hashlib.sha1(f"{relative_path}|{size}|{mtime}".encode()).hexdigest()


class ModelService:
    """A Sam, per-image predictors (memory LRU over the disk embedding cache), prefetch and hot reload.

    ``loader()`` builds the model from ``checkpoint`` (read again each time the file changes).
    ``text_encoder`` (CLIP, e.g. :class:`segany.text.OpenClipEmbedder`) turns text prompts on;
    every model loaded must then have a text projection of its width.

    Thread-safe: decoding runs concurrently, image encodings run one at a time, and a model
    swap never disturbs requests already running (they finish on the model they started with).
    """

    def __init__(
        self,
        loader: Callable[[], object],
        checkpoint: Path | None,
        cache_root: Path,
        memory_images: int = 6,
        text_encoder: PromptEmbedder | None = None,
    ) -> None:
        if memory_images < 1:
            raise ValueError(f"memory_images must be at least 1, got {memory_images}")
        self._loader = loader
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.cache_root = Path(cache_root)
        self.memory_images = memory_images
        self._lock = threading.Lock()  # guards _current, _predictors, _pending
        self._encoder_lock = threading.Lock()  # one image encoding at a time: it takes all the cores
        self._reload_lock = threading.Lock()
        self._decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="segany-decoder")
        self._predictors: OrderedDict[tuple[int, str], object] = OrderedDict()  # (id of model, image key)
        self._pending: list[tuple[Path, str]] = []
        self._wake = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._failed_stamp: tuple[int, int] | None = None
        self.last_error: str | None = None
        self.text_encoder = RecentTexts(text_encoder) if text_encoder is not None else None
        self._current = self._load()

    # -- model loading and hot reload ------------------------------------------------------

    @property
    def current(self) -> LoadedModel:
        return self._current

    def describe(self) -> dict:
        """What the page shows of the model: the checkpoint, whether it takes text, the last reload error."""
        return {**self._current.describe(), "text_prompts": self.text_encoder is not None,
                "last_error": self.last_error}

    def _load(self) -> LoadedModel:
        from segany.embedding_cache import model_fingerprint

        stamp = file_stamp(self.checkpoint) if self.checkpoint is not None else None
        sam = self._loader()
        if self.text_encoder is not None:  # a checkpoint without a text projection is refused, not served half-working
            sam.prompt_encoder.check_text_width(self.text_encoder.embed_dim)
        return LoadedModel(sam, model_fingerprint(sam), self.checkpoint, stamp)

    def reload_if_changed(self) -> bool:
        """Load the checkpoint again if its file changed since it was read; True if a new model is in.

        A file that fails to load (half-copied, wrong kind) leaves the running model in place;
        the error is kept in ``last_error`` and the same file is not retried until it changes.
        """
        if self.checkpoint is None:
            return False
        with self._reload_lock:  # the watcher and the reload endpoint may both ask
            try:
                stamp = file_stamp(self.checkpoint)
            except FileNotFoundError:
                return False  # mid-replacement, or removed: keep serving the model we have
            if stamp == self._current.stamp or stamp == self._failed_stamp:
                return False
            try:
                loaded = self._load()
            except Exception as error:  # whatever is wrong with the new file, the old model keeps serving
                self._failed_stamp, self.last_error = stamp, str(error)
                log.warning("segany serve: could not load the new checkpoint, keeping the old model: %s", error)
                return False
            with self._lock:
                previous, self._current = self._current, loaded
                self._predictors.clear()
            self.last_error = None
            if previous.fingerprint != loaded.fingerprint:  # a new encoder: the old embeddings are of no use
                shutil.rmtree(self.cache_root / previous.fingerprint, ignore_errors=True)
        log.warning("segany serve: loaded the new checkpoint %s (%s)", self.checkpoint, loaded.revision)
        return True

    # -- embeddings --------------------------------------------------------------------------

    def predictor(self, path: Path, key: str):
        """A predictor holding this image's embedding, from memory, the disk cache, or the encoder."""
        from segany import SamPredictor
        from segany.embedding_cache import EmbeddingCache, set_image_cached
        from segany.io import read_image

        model = self._current
        slot = (id(model), key)
        found = self._cached_predictor(slot)
        if found is not None:
            return found, model
        with self._encoder_lock:
            found = self._cached_predictor(slot)  # someone else may have just computed it
            if found is not None:
                return found, model
            predictor = SamPredictor(model.sam, self.text_encoder)
            set_image_cached(predictor, read_image(path), EmbeddingCache(self.cache_root), model.fingerprint)
        with self._lock:
            if self._current is model:
                self._predictors[slot] = predictor
                while len(self._predictors) > self.memory_images:
                    self._predictors.popitem(last=False)
        return predictor, model

    def _cached_predictor(self, slot: tuple[int, str]):
        with self._lock:
            predictor = self._predictors.get(slot)
            if predictor is not None:
                self._predictors.move_to_end(slot)
            return predictor

    def prefetch(self, images: list[tuple[Path, str]]) -> None:
        """Compute these images' embeddings in the background, replacing any earlier request."""
        with self._lock:
            self._pending = list(images)
            self._wake.notify()

    def _prefetch_loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                while not self._pending and not self._stop.is_set():
                    self._wake.wait(timeout=1.0)
                if self._stop.is_set():
                    return
                path, key = self._pending.pop(0)
            try:
                self.predictor(path, key)
            except Exception as error:  # e.g. an unreadable image: the person sees the error on opening it
                log.warning("segany serve: could not prefetch %s: %s", path, error)

    def _watch_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.reload_if_changed()

    def start(self, watch_interval: float | None = 2.0) -> None:
        """Start the prefetch worker and (if ``watch_interval``) the checkpoint watcher."""
        self._stop.clear()
        loops = [threading.Thread(target=self._prefetch_loop, name="segany-prefetch", daemon=True)]
        if watch_interval and self.checkpoint is not None:
            loops.append(threading.Thread(target=self._watch_loop, args=(watch_interval,),
                                          name="segany-watch", daemon=True))
        for thread in loops:
            thread.start()
        self._threads = loops

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            self._wake.notify_all()
        for thread in self._threads:
            thread.join(timeout=60)
        self._threads = []

    # -- prompts -----------------------------------------------------------------------------

    def propose(
        self,
        path: Path,
        key: str,
        points: np.ndarray | None,
        labels: np.ndarray | None,
        box: np.ndarray | None,
        text: str | None,
    ) -> Proposal:
        """The three candidates for a click/box/text prompt, as the decoder's low-res logits (to draw) and scores."""
        predictor, model = self.predictor(path, key)
        _, scores, low_res = self._decode(predictor, points, labels, box, text)
        upscale = model.sam.low_res_scale
        rows, cols = model.sam.low_res_extent(predictor.input_size)  # the part that reaches the image
        logits = np.clip(np.rint(low_res[:, :rows, :cols] * LOGIT_SCALE), -32767, 32767).astype("<i2")
        return Proposal(logits, predictor.input_size, upscale, [float(score) for score in scores], model)

    def mask(
        self,
        path: Path,
        key: str,
        points: np.ndarray | None,
        labels: np.ndarray | None,
        box: np.ndarray | None,
        text: str | None,
        candidate: int,
        revision: str | None = None,
    ) -> tuple[np.ndarray, float]:
        """The full-size mask of one candidate, exactly as the predictor gives it, and its score.

        ``revision`` is the model revision the person saw the candidate from: if another
        checkpoint has been loaded since, :class:`ModelChangedError` asks them to look again.
        """
        predictor, model = self.predictor(path, key)
        if revision is not None and revision != model.revision:
            raise ModelChangedError(
                "a new model checkpoint was loaded since this mask was shown; look at the new mask and accept again"
            )
        masks, scores, _ = self._decode(predictor, points, labels, box, text)
        return masks[candidate], float(scores[candidate])

    def _decode(self, predictor, points, labels, box, text) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``predictor.predict`` (3 candidates) on the one decoding thread.

        Requests arrive on many server threads, and each thread that runs torch keeps its own
        team of OpenMP workers; those of idle teams spin for a while and take the cores from
        the busy one. Funnelling every decode through one thread keeps one team, and the
        click latency low. CLIP's text tower runs there too, for the same reason.
        """
        if text is not None and self.text_encoder is None:
            raise ValueError("text prompts are off on this server: restart segany serve with --clip-checkpoint "
                             "(the CLIP weights that its model was trained with)")
        return self._decoder.submit(predictor.predict, points, labels, box, multimask_output=True,
                                    text=text).result()

    def automatic_masks(self, path: Path, **generator_options) -> list[dict]:
        """The automatic generator's masks for an image (records as ``SamAutomaticMaskGenerator`` returns)."""
        from segany.automask import SamAutomaticMaskGenerator
        from segany.io import read_image

        generator = SamAutomaticMaskGenerator(self._current.sam, output_mode="coco_rle", **generator_options)
        image = read_image(path)
        with self._encoder_lock:
            return generator.generate(image)
