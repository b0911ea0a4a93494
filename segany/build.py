"""Model configurations, building, and checkpoint loading/saving.

Official ``.pth`` state dicts load unchanged; segany's own weights are safetensors files
that carry their configuration in the header, so ``build_sam("auto", checkpoint=...)``
needs nothing else. For ``.pth`` files the configuration is read off the tensor shapes.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from segany.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from segany.modeling.efficientnet_encoder import EfficientNetLiteEncoder

CONFIG_METADATA_KEY = "segany_config"
GENERATION_METADATA_KEY = "segany_mask_generation"  # the weights' own automatic-generator thresholds
# The official automatic generator's filter values; weights may save their own for these names.
OFFICIAL_THRESHOLDS = {"pred_iou_thresh": 0.88, "stability_score_thresh": 0.95, "stability_score_offset": 1.0}
TEXT_PROJECTION = "prompt_encoder.text_projection."  # the parameters only text-promptable models have


@dataclass(frozen=True)
class SamConfig:
    """Every hyper-parameter that shapes the network (the official ones are vit_b/l/h below).

    ``encoder`` is "vit" (SAM's encoder; the ``encoder_*`` fields apply) or
    "efficientnet_lite0" (the embedded model's light encoder, stride 16). ``text_embed_dim``
    is the width of the CLIP embeddings the model takes as text prompts; 0 (the official
    models) means no text prompts and no text projection parameters.
    """

    encoder_embed_dim: int = 768
    encoder_depth: int = 12
    encoder_num_heads: int = 12
    encoder_global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    encoder: str = "vit"
    image_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    mlp_ratio: float = 4.0
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_num_heads: int = 8
    decoder_mlp_dim: int = 2048
    iou_head_hidden_dim: int = 256
    drop_path_rate: float = 0.0
    text_embed_dim: int = 0

    @property
    def embedding_size(self) -> int:
        return self.image_size // self.patch_size

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "SamConfig":
        values = json.loads(text)
        values["encoder_global_attn_indexes"] = tuple(values["encoder_global_attn_indexes"])
        return cls(**values)


CONFIGS: dict[str, SamConfig] = {
    "vit_h": SamConfig(1280, 32, 16, (7, 15, 23, 31)),
    "vit_l": SamConfig(1024, 24, 16, (5, 11, 17, 23)),
    "vit_b": SamConfig(768, 12, 12, (2, 5, 8, 11)),
    # A small random-init configuration for tests and experiments: 256 px input, 16x16 embedding.
    "tiny": SamConfig(64, 2, 2, (1,), image_size=256, window_size=6),
    # The embedded default model's architecture: EfficientNet-Lite0 at 512 px, SAM's decoder.
    "lite": SamConfig(encoder="efficientnet_lite0", image_size=512),
}
EMBEDDED_WEIGHTS = Path(__file__).resolve().parent / "weights" / "default.safetensors"


def build_model(config: SamConfig) -> Sam:
    """Build a randomly initialised Sam for ``config``, in eval mode."""
    grid = config.embedding_size
    if config.encoder == "efficientnet_lite0":
        encoder = EfficientNetLiteEncoder(img_size=config.image_size, out_chans=config.prompt_embed_dim)
    elif config.encoder == "vit":
        encoder = ImageEncoderViT(
            img_size=config.image_size,
            patch_size=config.patch_size,
            embed_dim=config.encoder_embed_dim,
            depth=config.encoder_depth,
            num_heads=config.encoder_num_heads,
            mlp_ratio=config.mlp_ratio,
            out_chans=config.prompt_embed_dim,
            window_size=config.window_size,
            global_attn_indexes=config.encoder_global_attn_indexes,
            drop_path_rate=config.drop_path_rate,
        )
    else:
        raise ValueError(f"unknown encoder '{config.encoder}'; expected 'vit' or 'efficientnet_lite0'")
    prompt_encoder = PromptEncoder(
        embed_dim=config.prompt_embed_dim,
        image_embedding_size=(grid, grid),
        input_image_size=(config.image_size, config.image_size),
        mask_in_chans=config.mask_in_chans,
        text_embed_dim=config.text_embed_dim,
    )
    decoder = MaskDecoder(
        transformer_dim=config.prompt_embed_dim,
        transformer=TwoWayTransformer(
            depth=config.decoder_depth,
            embedding_dim=config.prompt_embed_dim,
            num_heads=config.decoder_num_heads,
            mlp_dim=config.decoder_mlp_dim,
        ),
        iou_head_hidden_dim=config.iou_head_hidden_dim,
    )
    sam = Sam(encoder, prompt_encoder, decoder)
    sam.config = config
    return sam.eval()


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], SamConfig | None]:
    """Read a state dict (.pth/.pt or .safetensors) and the config stored with it, if any."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise IsADirectoryError(f"expected a checkpoint file, got a folder: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as reader:
                metadata = reader.metadata() or {}
                state_dict = {key: reader.get_tensor(key) for key in reader.keys()}
            stored = metadata.get(CONFIG_METADATA_KEY)
            return state_dict, SamConfig.from_json(stored) if stored else None
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch/safetensors raise many types for truncated or foreign files
        raise ValueError(f"cannot read checkpoint {path}: truncated, corrupt or not a model file ({error})") from None
    if isinstance(loaded, dict) and isinstance(loaded.get("model"), dict):
        loaded = loaded["model"]  # a training checkpoint: model + optimizer + ...
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ValueError(f"checkpoint {path} does not hold a state dict of tensors")
    return loaded, None


def read_generation_defaults(path: str | os.PathLike) -> dict[str, float]:
    """The automatic-generator thresholds stored with segany weights ({} for .pth files and when none are)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as reader:
        stored = (reader.metadata() or {}).get(GENERATION_METADATA_KEY)
    if not stored:
        return {}
    try:
        values = json.loads(stored)
    except json.JSONDecodeError:
        raise ValueError(f"{path}: its mask generation defaults are not JSON ({stored[:80]!r})") from None
    return check_generation_defaults(values, path)


def check_generation_defaults(values: Any, source: Any) -> dict[str, float]:
    """``values`` as generator thresholds (names from OFFICIAL_THRESHOLDS, numbers), or a ValueError naming ``source``."""
    if not isinstance(values, dict) or not all(
        name in OFFICIAL_THRESHOLDS and isinstance(value, (int, float)) for name, value in values.items()
    ):
        raise ValueError(f"{source}: mask generation defaults must map {', '.join(OFFICIAL_THRESHOLDS)} "
                         f"to numbers, got {values!r}")
    return {name: float(value) for name, value in values.items()}


def infer_config(state_dict: dict[str, torch.Tensor]) -> SamConfig:
    """Work out a ViT Sam's configuration from its parameter shapes."""
    try:
        patch = state_dict["image_encoder.patch_embed.proj.weight"]
        pos = state_dict["image_encoder.pos_embed"]
        embed_dim, patch_size = patch.shape[0], patch.shape[-1]
        grid = pos.shape[1]
        depth = 1 + max(int(k.split(".")[2]) for k in state_dict if k.startswith("image_encoder.blocks."))
        head_dim = state_dict["image_encoder.blocks.0.attn.rel_pos_h"].shape[1]
        window_sizes = [
            (state_dict[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape[0] + 1) // 2 for i in range(depth)
        ]
        global_blocks = tuple(i for i, size in enumerate(window_sizes) if size == grid)
        local_sizes = {size for size in window_sizes if size != grid}
        prompt_dim = state_dict["image_encoder.neck.0.weight"].shape[0]
        text_projection = state_dict.get(TEXT_PROJECTION + "weight")
        decoder_depth = 1 + max(
            int(k.split(".")[3]) for k in state_dict if k.startswith("mask_decoder.transformer.layers.")
        )
        return SamConfig(
            encoder_embed_dim=embed_dim,
            encoder_depth=depth,
            encoder_num_heads=embed_dim // head_dim,
            encoder_global_attn_indexes=global_blocks,
            image_size=grid * patch_size,
            patch_size=patch_size,
            window_size=local_sizes.pop() if local_sizes else 14,
            mlp_ratio=state_dict["image_encoder.blocks.0.mlp.lin1.weight"].shape[0] / embed_dim,
            prompt_embed_dim=prompt_dim,
            mask_in_chans=state_dict["prompt_encoder.mask_downscaling.3.weight"].shape[0],
            decoder_depth=decoder_depth,
            decoder_mlp_dim=state_dict["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0],
            iou_head_hidden_dim=state_dict["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0],
            text_embed_dim=text_projection.shape[1] if text_projection is not None else 0,
        )
    except (KeyError, ValueError, IndexError) as error:
        raise ValueError(f"not a Segment Anything state dict (could not read its configuration: missing {error})") from None


def config_name(config: SamConfig) -> str | None:
    """The registry name of a configuration, if it is one of the named ones."""
    for name, known in CONFIGS.items():
        if dataclasses.replace(known, drop_path_rate=0.0) == dataclasses.replace(config, drop_path_rate=0.0):
            return name
    return None


def _describe_mismatch(
    model: Sam, state_dict: dict[str, torch.Tensor], path: Path, name: str, fresh: tuple[str, ...] = ()
) -> str | None:
    expected = model.state_dict()
    missing = sorted(key for key in set(expected) - set(state_dict) if not key.startswith(fresh))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong_shape = [
        f"{key} {tuple(state_dict[key].shape)} != {tuple(expected[key].shape)}"
        for key in sorted(set(expected) & set(state_dict))
        if expected[key].shape != state_dict[key].shape
    ]
    if not (missing or unexpected or wrong_shape):
        return None
    lines = [f"checkpoint {path} does not fit the '{name}' model:"]
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", wrong_shape)):
        if items:
            shown = ", ".join(items[:5]) + (f", ... ({len(items)} in all)" if len(items) > 5 else "")
            lines.append(f"  {label}: {shown}")
    try:
        fitting = infer_config(state_dict)
        lines.append(f"  the checkpoint fits model type '{config_name(fitting) or 'auto'}'")
    except ValueError as error:
        lines.append(f"  {error}")
    return "\n".join(lines)


def load_weights(model: Sam, path: str | os.PathLike, name: str = "model", fresh: tuple[str, ...] = ()) -> Sam:
    """Load a checkpoint into ``model``, explaining any key or shape mismatch.

    Parameters under the ``fresh`` prefixes may be absent from the checkpoint; they keep
    their initialisation (a module added for fine-tuning).
    """
    state_dict, _ = read_checkpoint(path)
    problem = _describe_mismatch(model, state_dict, Path(path), name, fresh)
    if problem:
        raise ValueError(problem)
    model.load_state_dict(state_dict, strict=not fresh)
    return model


def build_sam(
    name: str = "default",
    checkpoint: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    **overrides: Any,
) -> Sam:
    """Build a Sam by configuration name, optionally loading a checkpoint.

    ``name`` is "vit_h", "vit_l", "vit_b", "tiny", "lite", "auto" (configuration read from
    the checkpoint), or "default": the checkpoint's own configuration when one is given (as
    the official ``sam_model_registry["default"]`` loads vit_h), else segany's embedded model.
    For drop-in compatibility, a checkpoint path given as the first argument also works.
    ``overrides`` replace configuration fields (e.g. ``drop_path_rate`` for training);
    ``text_embed_dim=D`` on a checkpoint without text prompts adds a freshly initialised
    text projection, to fine-tune a model for text prompts.
    """
    if name not in CONFIGS and name not in ("auto", "default") and checkpoint is None:
        if Path(str(name)).suffix in (".pth", ".pt", ".safetensors") or Path(str(name)).is_file():
            name, checkpoint = "auto", name
        else:
            known = ", ".join(list(CONFIGS) + ["auto", "default"])
            raise ValueError(f"unknown model type '{name}'; expected one of: {known}")
    if name == "default" and checkpoint is None:
        if not EMBEDDED_WEIGHTS.exists():
            raise ValueError(
                "no embedded default model is bundled in this version of segany; "
                "pass checkpoint=PATH to official weights (e.g. sam_vit_b_01ec64.pth)"
            )
        checkpoint = EMBEDDED_WEIGHTS
    if name in ("auto", "default"):
        if checkpoint is None:
            raise ValueError("model type 'auto' needs a checkpoint to read the configuration from")
        state_dict, stored = read_checkpoint(checkpoint)
        config = stored or infer_config(state_dict)
        name = config_name(config) or "auto"
    else:
        config = CONFIGS[name]
    fresh = (TEXT_PROJECTION,) if overrides.get("text_embed_dim") and not config.text_embed_dim else ()
    if overrides:
        config = dataclasses.replace(config, **overrides)
    model = build_model(config)
    if checkpoint is not None:
        load_weights(model, checkpoint, name, fresh)
        model.mask_generation_defaults = read_generation_defaults(checkpoint)
    if device is not None or dtype is not None:
        model = model.to(device=device, dtype=dtype)
    return model


def save_sam(model: Sam, path: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
    """Save a Sam as safetensors with its configuration (and generator thresholds, if any) in the header (atomic write)."""
    from safetensors.torch import save

    from segany.io import atomic_write

    tensors = {
        key: (value.to(dtype) if dtype is not None and value.is_floating_point() else value).contiguous()
        for key, value in model.state_dict().items()
    }
    metadata = {CONFIG_METADATA_KEY: model.config.to_json()}
    generation = check_generation_defaults(model.mask_generation_defaults, "model.mask_generation_defaults")
    if generation:
        metadata[GENERATION_METADATA_KEY] = json.dumps(generation, sort_keys=True)
    payload = save(tensors, metadata=metadata)
    with atomic_write(path) as stream:
        stream.write(payload)
    return Path(path)


def _registry_entry(name: str) -> Callable[..., Sam]:
    def build(checkpoint: str | os.PathLike | None = None, **kwargs: Any) -> Sam:
        return build_sam(name, checkpoint, **kwargs)

    build.__name__ = f"build_sam_{name}"
    build.__doc__ = f"Build the '{name}' Sam, optionally loading ``checkpoint``."
    return build


build_sam_vit_h = _registry_entry("vit_h")
build_sam_vit_l = _registry_entry("vit_l")
build_sam_vit_b = _registry_entry("vit_b")

sam_model_registry: dict[str, Callable[..., Sam]] = {
    name: _registry_entry(name) for name in ["default", *CONFIGS, "auto"]
}
