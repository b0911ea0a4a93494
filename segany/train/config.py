"""The training configuration: typed sections, read from YAML, overridden from the command line.

The defaults are the SAM paper's recipe for ViT-H (appendix A), so that a YAML file only
states what differs; ``configs/sam_paper.yaml`` writes them all out with their sources.
A YAML file may name a ``base`` file (relative to itself) whose values it overrides.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

FREEZABLE_MODULES = ("image_encoder", "prompt_encoder", "mask_decoder")
PRECISIONS = ("fp32", "bf16", "fp16")
WEIGHTS_DTYPES = ("fp32", "fp16")
SOURCE_KINDS = ("dataset", "scenes")
BACKBONES = (None, "efficientnet_lite0_imagenet")


@dataclass
class ModelConfig:
    type: str = "vit_h"  # a build_sam name; "auto" reads the architecture from ``init``
    init: str | None = None  # weights to start from: an official .pth or a segany .safetensors
    drop_path_rate: float = 0.4  # paper: 0.4 (ViT-H, ViT-L), 0.6 (ViT-B)
    overrides: dict[str, Any] = field(default_factory=dict)  # SamConfig fields, e.g. {decoder_mlp_dim: 512}
    init_backbone: str | None = None  # "efficientnet_lite0_imagenet": ImageNet weights for the "lite" encoder
    freeze: list[str] = field(default_factory=list)  # FREEZABLE_MODULES or their parts (dotted submodule paths)


@dataclass
class SourceConfig:
    """One training source in a weighted mix (``data.sources``)."""

    kind: str = "dataset"  # "dataset" (anything open_dataset reads) or "scenes" (procedural, segany.train.scenes)
    path: str | None = None  # kind dataset: the dataset
    coco_mval: str | None = None  # kind scenes: a COCO-MVal-layout folder giving photos and cut-outs
    count: int = 10000  # kind scenes: how many distinct scenes
    size: int = 512  # kind scenes: scene side in pixels
    weight: float = 1.0  # share of the training images drawn from this source


@dataclass
class DataConfig:
    path: str | None = None  # anything segany.datasets.open_dataset reads (shorthand for one source)
    sources: list[SourceConfig] = field(default_factory=list)  # a weighted mix instead of ``path``
    masks_per_image: int = 64  # paper: up to 64 randomly sampled masks per GPU (one image per GPU)
    max_mask_area: float = 0.9  # paper: discard masks covering more than 90% of the image
    horizontal_flip: bool = False  # paper: no augmentation
    scale_jitter: list[float] | None = None  # paper ablations: large-scale jitter [0.1, 2.0]
    workers: int = 2  # DataLoader worker processes per training process
    embedding_cache: str | None = None  # folder; default RUN_DIR/embeddings when the encoder is frozen


@dataclass
class PromptConfig:
    box_probability: float = 0.5  # first prompt: box or point with equal probability
    box_noise: float = 0.1  # box noise std as a fraction of the box side ...
    box_noise_max: float = 20.0  # ... at most this many pixels
    rounds: int = 11  # paper: 1 first prompt + 8 error-point rounds + 2 mask-only rounds (see round_schedule)


@dataclass
class TextConfig:
    """Training for text prompts (SAM paper, section 7.5): CLIP crop embeddings as first prompts."""

    probability: float = 0.0  # share of objects prompted first by their crop's CLIP embedding; 0 = off
    clip_model: str = "ViT-L-14-336"  # open_clip architecture; paper: CLIP ViT-L/14 at 336 px
    clip_checkpoint: str | None = None  # local open_clip weights file (required when probability > 0)
    crop_expand: float = 2.0  # crop side / mask box's longer side (not in the paper)
    min_mask_area: int = 0  # smaller masks (pixels at model input) keep point/box prompts; paper: 100 x 100
    embedding_cache: str | None = None  # folder; default RUN_DIR/text_embeddings


@dataclass
class LossConfig:
    focal_weight: float = 20.0  # paper: focal:dice = 20:1
    dice_weight: float = 1.0
    iou_weight: float = 1.0  # paper: IoU-head MSE scaled by 1
    focal_alpha: float = 0.25  # not in the paper: the focal-loss paper's values
    focal_gamma: float = 2.0


@dataclass
class OptimConfig:
    lr: float = 8e-4  # paper: 8e-4 (ViT-H, ViT-B), 4e-4 (ViT-L)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.1
    layer_decay: float = 0.8  # paper: 0.8 (ViT-H, ViT-L), 0.6 (ViT-B)
    warmup_steps: int = 250
    warmup_start_factor: float = 0.001  # not in the paper
    decay_steps: list[int] = field(default_factory=lambda: [60000, 86666])
    decay_factor: float = 0.1
    grad_clip_norm: float | None = None  # the paper states no clipping; set a max norm (e.g. 1.0) to clip


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    text: TextConfig = field(default_factory=TextConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    steps: int = 90000  # paper: 90k (ViT-H), 180k (ViT-B, ViT-L)
    batch_size: int = 256  # images per optimiser step, over all processes; paper: 256 (ViT-H), 128 (B, L)
    accumulation_steps: int = 1  # split each process's share of a batch into this many passes
    precision: str = "bf16"  # on GPU: bf16 or fp16 autocast (fp16 with loss scaling); CPU always runs fp32
    weights_dtype: str = "fp32"  # final.safetensors' floats; fp16 halves a release (checkpoints stay fp32)
    device: str = "auto"  # "auto" (cuda when available), "cuda", "cpu"
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3

    def validate(self, world_size: int = 1) -> "TrainConfig":
        """Raise a ValueError naming the first setting that cannot work."""
        checks = [
            (self.steps > 0, "steps must be positive"),
            (self.batch_size > 0, "batch_size must be positive"),
            (self.accumulation_steps > 0, "accumulation_steps must be positive"),
            (
                self.batch_size % (world_size * self.accumulation_steps) == 0,
                f"batch_size {self.batch_size} must be divisible by processes ({world_size}) "
                f"x accumulation_steps ({self.accumulation_steps})",
            ),
            (self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}"),
            (self.weights_dtype in WEIGHTS_DTYPES,
             f"weights_dtype must be one of {WEIGHTS_DTYPES}, got {self.weights_dtype!r}"),
            (self.device in ("auto", "cpu") or self.device.startswith("cuda"),
             f"device must be 'auto', 'cpu' or 'cuda[:N]', got {self.device!r}"),
            ({name.split(".")[0] for name in self.model.freeze} <= set(FREEZABLE_MODULES),
             f"model.freeze takes {list(FREEZABLE_MODULES)} or a part of one (e.g. image_encoder._blocks), "
             f"got {self.model.freeze}"),
            (self.data.masks_per_image > 0, "data.masks_per_image must be positive"),
            (not (self.data.path and self.data.sources), "give data.path or data.sources, not both"),
            (all(s.kind in SOURCE_KINDS and s.weight > 0 and s.count > 0 for s in self.data.sources),
             f"each of data.sources needs kind in {SOURCE_KINDS}, a positive weight and count"),
            (self.model.init_backbone in BACKBONES, f"model.init_backbone must be one of {BACKBONES}"),
            (0 < self.data.max_mask_area <= 1, "data.max_mask_area must be in (0, 1]"),
            (self.data.scale_jitter is None or (len(self.data.scale_jitter) == 2
                                                 and 0 < self.data.scale_jitter[0] <= self.data.scale_jitter[1]),
             f"data.scale_jitter must be null or [min, max] with 0 < min <= max, got {self.data.scale_jitter}"),
            (0 <= self.prompts.box_probability <= 1, "prompts.box_probability must be in [0, 1]"),
            (self.prompts.rounds >= 1, "prompts.rounds must be at least 1"),
            (0 <= self.text.probability <= 1, "text.probability must be in [0, 1]"),
            (self.text.crop_expand >= 1, "text.crop_expand must be at least 1"),
            (self.text.probability == 0 or "prompt_encoder" not in self.model.freeze,
             "text prompts train the prompt encoder's text projection: do not freeze prompt_encoder"),
            (len(self.optim.betas) == 2, "optim.betas must be [beta1, beta2]"),
            (0 < self.optim.layer_decay <= 1, "optim.layer_decay must be in (0, 1]"),
            (self.log_every > 0 and self.checkpoint_every > 0 and self.keep_checkpoints > 0,
             "log_every, checkpoint_every and keep_checkpoints must be positive"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"training config: {message}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls: type, values: Any, where: str) -> Any:
    """Instantiate dataclass ``cls`` from a mapping, recursing into sections; reject unknown keys."""
    if not isinstance(values, dict):
        raise ValueError(f"training config: '{where or 'the file'}' must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ValueError(
            f"training config: unknown setting '{prefix}{unknown[0]}'; "
            f"expected one of: {', '.join(prefix + name for name in sorted(known))}"
        )
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        path = f"{where}.{name}" if where else name
        kwargs[name] = _build(hint, value, path) if dataclasses.is_dataclass(hint) else _coerce(value, hint, path)
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check a scalar/list setting against its annotation (ints are accepted for floats)."""
    is_union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    options = typing.get_args(hint) if is_union else (hint,)
    if value is None and type(None) in options:
        return None
    for option in options:
        origin = typing.get_origin(option) or option
        if origin is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if origin in (str, bool, dict) and isinstance(value, origin):
            return value
        if origin is list and isinstance(value, (list, tuple)):
            (item,) = typing.get_args(option) or (Any,)
            if dataclasses.is_dataclass(item):
                return [_build(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
            return [_coerce(v, item, where) for v in value] if item is not Any else list(value)
        if option is Any:
            return value
    raise ValueError(f"training config: '{where}' has the wrong type: got {value!r}, expected {hint}")


def _merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "overrides":
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file's values, with its ``base`` chain merged underneath."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training config not found: {path}")
    if path.resolve() in _seen:
        raise ValueError(f"training config: 'base' files form a cycle at {path}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"training config {path} is not valid YAML: {error}") from None
    if not isinstance(values, dict):
        raise ValueError(f"training config {path} must hold a mapping of settings")
    base = values.pop("base", None)
    if base is None:
        return values
    return _merge(read_yaml(path.parent / base, _seen + (path.resolve(),)), values)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=1e-4"`` -> (["optim", "lr"], 0.0001); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"override {text!r} must look like section.name=value (e.g. optim.lr=1e-4)")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and _looks_numeric(value):
        value = float(value)  # YAML 1.1 reads "1e-4" as a string
    return key.strip().split("."), value


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    values = _merge({}, values)
    for text in overrides:
        keys, value = parse_override(text)
        node = values
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {text!r}: '{key}' is not a section")
        node[keys[-1]] = value
    return values


def load_config(path: str | os.PathLike | None = None, overrides: list[str] = ()) -> TrainConfig:
    """The defaults, updated by the YAML file at ``path`` (if any), then by ``key=value`` overrides."""
    values = read_yaml(path) if path is not None else {}
    return _build(TrainConfig, apply_overrides(values, list(overrides)), "")


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    return _build(TrainConfig, values, "")
