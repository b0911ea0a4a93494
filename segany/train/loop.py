"""The training run: model set-up, the optimisation loop, DDP, logging, checkpoints and resuming.

One process or many under ``torchrun`` (DistributedDataParallel; NCCL on GPUs, gloo on
CPUs) run the same code. Each step's global batch is fixed by the step number, and every
process scales its loss by the global number of objects, so the gradients, and hence the
weights, do not depend on how many processes share the batch. A run directory holds::

    config.yaml           the resolved configuration
    metrics.jsonl         one line per logged step
    plot.png              loss and mIoU curves
    text_embeddings/      cached CLIP embeddings of mask crops, when training for text prompts
    checkpoints/step_N.pt everything needed to resume exactly
    final.safetensors     the trained weights (floats as ``weights_dtype``), for build_sam("auto", checkpoint=...)
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist
import yaml
from tqdm import tqdm

from segany import distributed
from segany.build import build_sam, save_sam
from segany.embedding_cache import EmbeddingCache, image_fingerprint, model_fingerprint
from segany.io import atomic_write
from segany.modeling import Sam
from segany.text import OpenClipEmbedder, PromptEmbedder
from segany.train.checkpoint import (
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from segany.train.config import ModelConfig, TrainConfig
from segany.train.data import DeviceBatch, MaskSample, StepSampler, TrainingExample, TrainingSet, data_loader, open_training_data
from segany.train.interactive import STAT_NAMES, InteractiveSegmentation
from segany.train.metrics import MetricsLog, plot_metrics
from segany.train.optim import build_optimizer, build_scheduler
from segany.train.prompts import PromptDraws, round_schedule
from segany.train.text_prompts import CropPrompter

log = logging.getLogger("segany.train")

# Settings a resumed run may change without breaking exact continuation.
RESUMABLE_CHANGES = {"steps", "log_every", "checkpoint_every", "keep_checkpoints", "device",
                     "data.path", "data.workers", "data.embedding_cache", "text.embedding_cache"}
FINAL_WEIGHTS = "final.safetensors"


def resolve_device(name: str) -> str:
    """"auto" becomes cuda when a GPU is visible; under torchrun, cuda becomes this worker's GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"training device {name!r} requested but no GPU is available (use device: cpu)")
    return distributed.worker_device(name)


def build_training_model(config: ModelConfig, seed: int, text_embed_dim: int = 0) -> Sam:
    """The model to train: seeded random init or ``config.init``, with the training-only settings.

    ``text_embed_dim`` > 0 (the CLIP width, when training for text prompts) gives it a text
    projection, freshly initialised if ``config.init`` has none.
    """
    torch.manual_seed(seed)
    overrides = dict(config.overrides)
    if text_embed_dim:
        if overrides.get("text_embed_dim", text_embed_dim) != text_embed_dim:
            raise ValueError(f"text embedding width mismatch: model.overrides.text_embed_dim is "
                             f"{overrides['text_embed_dim']}, the CLIP model's embeddings are {text_embed_dim} wide")
        overrides["text_embed_dim"] = text_embed_dim
    sam = build_sam(config.type, checkpoint=config.init, drop_path_rate=config.drop_path_rate, **overrides)
    if config.init_backbone == "efficientnet_lite0_imagenet" and config.init is None:
        if not hasattr(sam.image_encoder, "load_pretrained_backbone"):
            raise ValueError(f"model.init_backbone {config.init_backbone!r} needs an EfficientNet-Lite0 encoder "
                             f"(model.type lite), not '{config.type}'")
        from segany.modeling.efficientnet_encoder import pretrained_lite0_state_dict

        sam.image_encoder.load_pretrained_backbone(pretrained_lite0_state_dict())
    return sam


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and key != "overrides":
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_resumable(saved: dict[str, Any], current: TrainConfig) -> None:
    """Refuse to resume with a different recipe (that would not continue the same run)."""
    before, now = _flatten(saved), _flatten(current.to_dict())
    changed = [key for key in sorted(set(before) | set(now))
               if key not in RESUMABLE_CHANGES and before.get(key) != now.get(key)]
    if changed:
        details = ", ".join(f"{key}: {before.get(key)!r} -> {now.get(key)!r}" for key in changed[:5])
        raise ValueError(f"cannot resume with a different training recipe ({details}); start a new run directory")


class Trainer:
    """Holds a run's state; :meth:`run` trains from the last checkpoint (or the start) to ``config.steps``."""

    def __init__(self, config: TrainConfig, run_dir: str | os.PathLike, resume: bool = False,
                 dataset: Sequence[MaskSample] | None = None, text_encoder: PromptEmbedder | None = None) -> None:
        self.world, self.rank = distributed.world_size(), distributed.rank()
        self.config = config.validate(self.world)
        self.run_dir = Path(run_dir)
        self.device = torch.device(resolve_device(config.device))
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl")
        checkpoints = list_checkpoints(self.run_dir)
        if checkpoints and not resume:
            raise ValueError(f"{self.run_dir} already holds a training run (checkpoints/); "
                             "pass --resume to continue it, or choose another output folder")
        saved = load_checkpoint(checkpoints[-1][1]) if checkpoints else None
        if saved is not None:
            check_resumable(saved["config"], config)

        self.text = None
        if config.text.probability > 0:
            text_encoder = text_encoder or OpenClipEmbedder(config.text.clip_model, config.text.clip_checkpoint,
                                                            self.device)
            self.text = CropPrompter(config.text, text_encoder,
                                     config.text.embedding_cache or self.run_dir / "text_embeddings")
        text_width = self.text.embedder.embed_dim if self.text is not None else 0
        self.sam = build_training_model(config.model, config.seed, text_width).to(self.device)
        self.frozen = set(config.model.freeze)
        for name in self.frozen:
            self._frozen_module(name).requires_grad_(False)
        self.step_module = InteractiveSegmentation(self.sam, config.prompts, config.loss)
        self.optimizer = build_optimizer(self.sam, config.optim)
        self.scheduler = build_scheduler(self.optimizer, config.optim)
        on_gpu = self.device.type == "cuda"
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.precision) if on_gpu else None
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=on_gpu and config.precision == "fp16")
        self.start_step = 0
        if saved is not None:
            self._restore(saved)
        self.model: torch.nn.Module = self.step_module
        if self.world > 1:
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.step_module, device_ids=[self.device.index] if on_gpu else None, find_unused_parameters=True
            )

        self.cache = self.cache_key = None
        if "image_encoder" in self.frozen:
            self.cache = EmbeddingCache(config.data.embedding_cache or self.run_dir / "embeddings")
            self.cache_key = model_fingerprint(self.sam)
        source = dataset if dataset is not None else self._open_data()
        self.dataset = TrainingSet(source, self.sam.image_encoder.img_size, config.data, config.seed)
        if distributed.is_main_process():
            self._prepare_run_dir()

    def _frozen_module(self, name: str) -> torch.nn.Module:
        """The module that ``model.freeze`` names: a top-level part or a dotted path inside one."""
        try:
            return self.sam.get_submodule(name)
        except AttributeError as error:
            raise ValueError(f"model.freeze names {name!r}, which this '{self.config.model.type}' model "
                             "does not have") from error

    def _open_data(self) -> Sequence[MaskSample]:
        return open_training_data(self.config.data, self.config.seed)

    def _restore(self, saved: dict[str, Any]) -> None:
        self.sam.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        self.start_step = int(saved["step"])
        states = saved["rng"]
        if len(states) == self.world:
            set_rng_state(states[self.rank])
        else:
            log.warning("resuming on %d processes, checkpoint written by %d: random streams (drop path) differ",
                        self.world, len(states))

    def _prepare_run_dir(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.run_dir / "config.yaml", "w") as stream:
            yaml.safe_dump(self.config.to_dict(), stream, sort_keys=False)
        self.metrics.truncate(self.start_step)

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> Path:
        """Train to ``config.steps``; returns the final weights' path."""
        config = self.config
        self.sam.train()
        for name in self.frozen:  # frozen parts run as at inference: no drop path, fixed norm statistics
            self._frozen_module(name).eval()
        for module in self.sam.modules():
            # BatchNorm keeps its pretrained statistics even where its layer trains: a few images per
            # process give noisy batch statistics, and the pretrained weights expect the stored ones.
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eval()
        sampler = StepSampler(self.start_step, config.steps, config.batch_size, self.rank, self.world,
                              config.accumulation_steps)
        batches = iter(data_loader(self.dataset, sampler, config.data.workers))
        window = torch.zeros(len(STAT_NAMES) + 1, dtype=torch.float64)
        window_start = time.perf_counter()
        progress = tqdm(total=config.steps, initial=self.start_step, desc="training", unit="step",
                        disable=not distributed.is_main_process(), dynamic_ncols=True)
        for step in range(self.start_step, config.steps):
            microbatches = [next(batches) for _ in range(config.accumulation_steps)]
            sums, objects = self._optimise(step, microbatches)
            window += torch.cat([sums, objects[None]]).cpu().double()
            done = step + 1
            means = {name: float(value) for name, value in zip(STAT_NAMES, sums / objects.clamp(min=1))}
            progress.set_postfix(loss=f"{means['loss']:.4f}", miou=f"{means['miou']:.3f}")
            progress.update(1)
            if done % config.log_every == 0 or done == config.steps:
                self._log(done, window, time.perf_counter() - window_start)
                window.zero_()
                window_start = time.perf_counter()
            if done % config.checkpoint_every == 0 or done == config.steps:
                self._checkpoint(done)
        progress.close()
        final = self.run_dir / FINAL_WEIGHTS
        if distributed.is_main_process():
            save_sam(self.sam, final, dtype=torch.float16 if config.weights_dtype == "fp16" else None)
        distributed.barrier()
        return final

    def _optimise(self, step: int, microbatches: list[list[TrainingExample]]) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step over the global batch; returns (summed STAT_NAMES, object count), all processes."""
        config = self.config
        batches = [DeviceBatch.from_examples(examples, self.sam.image_encoder.img_size, self.device)
                   for examples in microbatches]
        objects = torch.tensor(float(sum(len(batch.masks) for batch in batches)), device=self.device)
        self._all_reduce(objects)
        schedule = round_schedule(config.prompts.rounds, np.random.default_rng([config.seed, step, 2]))
        stat_sums = torch.zeros(len(STAT_NAMES), device=self.device)
        for index, (examples, batch) in enumerate(zip(microbatches, batches)):
            draws = self._prompt_draws(batch, len(schedule))
            embeddings = self._frozen_embeddings(examples, batch)
            text = self.text.prompts(examples).to(self.device) if self.text is not None else None
            last = index == len(batches) - 1
            sync = contextlib.nullcontext() if last or self.world == 1 else self.model.no_sync()
            with sync, self._autocast():
                loss_sum, sums = self.model(batch, draws, schedule, embeddings, text)
            # Normalised by the global object count; DDP averages over processes, hence x world.
            self.scaler.scale(loss_sum * self.world / objects).backward()
            stat_sums += sums
        self.scaler.unscale_(self.optimizer)
        if config.optim.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_([p for p in self.sam.parameters() if p.requires_grad],
                                           config.optim.grad_clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self._all_reduce(stat_sums)
        return stat_sums, objects

    def _prompt_draws(self, batch: DeviceBatch, later_rounds: int) -> PromptDraws:
        """Each image's prompt randomness from its own seed (independent of batching and processes)."""
        parts = [
            PromptDraws.draw(torch.Generator().manual_seed(seed), count, later_rounds,
                             self.config.prompts.box_probability)
            for seed, count in zip(batch.prompt_seeds, batch.counts)
        ]
        return PromptDraws.concatenate(parts).to(self.device)

    @torch.no_grad()
    def _frozen_embeddings(self, examples: list[TrainingExample], batch: DeviceBatch) -> torch.Tensor | None:
        """With a frozen encoder: embeddings from the cache, computing (and storing) the missing ones."""
        if self.cache is None:
            return None
        keys = [image_fingerprint(example.image) for example in examples]
        found = [self.cache.get(self.cache_key, key) for key in keys]
        missing = [index for index, entry in enumerate(found) if entry is None]
        if missing:
            with self._autocast():
                computed = self.step_module.embed(batch.images[missing], [batch.image_sizes[i] for i in missing]).float()
            for index, embedding in zip(missing, computed):
                found[index] = {"features": embedding}
                self.cache.put(self.cache_key, keys[index], found[index])
        return torch.stack([entry["features"].to(self.device) for entry in found])

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _all_reduce(self, tensor: torch.Tensor) -> None:
        if dist.is_initialized():
            dist.all_reduce(tensor)

    # -- records ---------------------------------------------------------------------------

    def _log(self, step: int, window: torch.Tensor, seconds: float) -> None:
        if not distributed.is_main_process():
            return
        objects = float(window[-1])
        record: dict[str, Any] = {"step": step, "lr": self.optimizer.param_groups[-1]["lr"]}
        record.update({name: float(value) / max(objects, 1) for name, value in zip(STAT_NAMES, window[:-1])})
        record["objects"] = int(objects)
        record["seconds"] = round(seconds, 3)
        self.metrics.append(record)

    def _checkpoint(self, step: int) -> None:
        states = distributed.gather_to_all(rng_state())
        if distributed.is_main_process():
            state = {
                "model": self.sam.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "step": step,
                "rng": states,
                "config": self.config.to_dict(),
            }
            save_checkpoint(checkpoint_path(self.run_dir, step), state, self.config.keep_checkpoints)
            records = self.metrics.read()
            if records:
                plot_metrics(records, self.run_dir / "plot.png")
        distributed.barrier()


def train(config: TrainConfig, run_dir: str | os.PathLike, resume: bool = False,
          dataset: Sequence[MaskSample] | None = None, text_encoder: PromptEmbedder | None = None) -> Path:
    """Train (or, with ``resume``, continue training) into ``run_dir``; returns the final weights.

    Joins the torchrun process group when started under torchrun. ``dataset`` replaces
    ``config.data.path`` with any indexable collection of samples (``.image``, ``.masks``);
    ``text_encoder`` replaces the open_clip model of ``config.text`` (any aligned embedder).
    """
    with distributed.process_group(resolve_device(config.device)):
        return Trainer(config, run_dir, resume, dataset, text_encoder).run()

