"""The YAML recipe (defaults, base files, overrides, bad values) and the optimiser it builds."""

from pathlib import Path

import pytest
import torch
from torch import nn

from segany.build import build_sam
from segany.train.config import TrainConfig, load_config
from segany.train.optim import build_scheduler, encoder_layer_ids, parameter_groups

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_paper_yaml_states_the_builtin_defaults_and_the_paper_values():
    config = load_config(CONFIGS / "sam_paper.yaml")
    assert config == TrainConfig()
    assert (config.optim.lr, config.optim.weight_decay, config.optim.layer_decay) == (8e-4, 0.1, 0.8)
    assert (config.optim.warmup_steps, config.optim.decay_steps, config.steps) == (250, [60000, 86666], 90000)
    assert (config.loss.focal_weight, config.loss.dice_weight, config.loss.iou_weight) == (20, 1, 1)
    assert (config.data.masks_per_image, config.prompts.rounds, config.batch_size) == (64, 11, 256)
    assert config.model.drop_path_rate == 0.4


def test_base_file_and_command_line_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(f"base: {CONFIGS / 'tiny_cpu.yaml'}\noptim:\n  lr: 0.5\n")
    config = load_config(path, ["optim.lr=1e-4", "model.freeze=[image_encoder]", "data.scale_jitter=[0.5, 1.5]"])
    assert config.model.type == "tiny" and config.optim.weight_decay == 0.1  # from tiny_cpu and sam_paper
    assert config.optim.lr == 1e-4 and config.model.freeze == ["image_encoder"]
    assert config.data.scale_jitter == [0.5, 1.5]


def test_data_sources_are_read_as_a_typed_list():
    config = load_config(None, ["data.sources=[{kind: scenes, coco_mval: /x, count: 5, weight: 2}, {path: a.json}]"])
    assert [s.kind for s in config.data.sources] == ["scenes", "dataset"]
    assert config.data.sources[0].weight == 2.0 and config.data.sources[1].path == "a.json"


@pytest.mark.parametrize("overrides, message", [
    (["optim.lr=fast"], "optim.lr"),
    (["optim.learning_rate=1"], "unknown setting 'optim.learning_rate'"),
    (["model.freeze=[encoder]"], "model.freeze"),
    (["batch_size=3", "accumulation_steps=2"], "divisible"),
    (["prompts.rounds=0"], "prompts.rounds"),
    (["data.sources=[{kind: video}]"], "data.sources"),
    (["lr"], "section.name=value"),
])
def test_bad_settings_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, overrides).validate()


def test_missing_config_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_config(tmp_path / "missing.yaml")


def test_layer_wise_decay_scales_vit_blocks_and_leaves_the_decoder_at_full_rate():
    torch.manual_seed(0)
    sam = build_sam("tiny")
    config = load_config(None, ["optim.layer_decay=0.5"]).optim
    ids, depth = encoder_layer_ids(sam.image_encoder)
    assert depth == 2 and ids["patch_embed.proj.weight"] == 0 and ids["blocks.1.mlp.lin1.weight"] == 2
    assert all(value == 3 for name, value in ids.items() if name.startswith("neck"))
    rates = {id(p): group["lr"] for group in parameter_groups(sam, config) for p in group["params"]}
    encoder = sam.image_encoder
    assert rates[id(encoder.patch_embed.proj.weight)] == pytest.approx(8e-4 * 0.5**3)
    assert rates[id(encoder.blocks[1].mlp.lin1.weight)] == pytest.approx(8e-4 * 0.5)
    assert rates[id(encoder.neck[0].weight)] == pytest.approx(8e-4)
    assert all(rates[id(p)] == 8e-4 for p in sam.mask_decoder.parameters())
    decays = {id(p): group["weight_decay"] for group in parameter_groups(sam, config) for p in group["params"]}
    assert decays[id(encoder.pos_embed)] == 0 and decays[id(encoder.blocks[0].norm1.bias)] == 0
    assert decays[id(encoder.blocks[0].attn.qkv.weight)] == 0.1


def test_encoder_without_blocks_trains_at_full_rate_and_frozen_parts_are_left_out():
    sam = build_sam("tiny")
    sam.image_encoder = nn.Sequential(nn.Conv2d(3, 8, 3))
    sam.prompt_encoder.requires_grad_(False)
    groups = parameter_groups(sam, load_config().optim)
    rates = {id(p): group["lr"] for group in groups for p in group["params"]}
    assert all(rates[id(p)] == 8e-4 for p in sam.image_encoder.parameters())
    assert not any(id(p) in rates for p in sam.prompt_encoder.parameters())


def test_lite_encoder_gets_layer_decay_over_its_stages():
    _, depth = encoder_layer_ids(build_sam("lite", image_size=128).image_encoder)
    assert depth > 1


def test_schedule_warms_up_linearly_then_steps_down_tenfold():
    config = load_config(None, ["optim.warmup_steps=4", "optim.decay_steps=[6, 8]", "optim.warmup_start_factor=0"]).optim
    optimizer = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=config.lr)
    scheduler = build_scheduler(optimizer, config)
    rates = []
    for _ in range(10):
        rates.append(optimizer.param_groups[0]["lr"] / config.lr)
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0, 0.25, 0.5, 0.75, 1, 1, 0.1, 0.1, 0.01, 0.01])


def test_embedded_stage2_continues_stage1_on_other_data_from_its_weights():
    stage1, stage2 = load_config(CONFIGS / "embedded.yaml"), load_config(CONFIGS / "embedded_stage2.yaml")
    assert stage2.model.init == "runs/embedded/final.safetensors" and stage2.seed != stage1.seed
    assert stage1.weights_dtype == stage2.weights_dtype == "fp16"  # each stage starts from the weights as shipped
    assert (stage2.data, stage2.loss, stage2.prompts) == (stage1.data, stage1.loss, stage1.prompts)
    assert stage2.model.freeze == stage1.model.freeze and stage2.model.type == stage1.model.type
    assert (stage2.steps, stage2.optim.decay_steps, stage2.optim.lr) == (1200, [950], stage1.optim.lr)


def optimiser_rates(sam: nn.Module, config: TrainConfig) -> dict[int, float]:
    """Learning rate of each parameter (by id) that the optimiser gets once ``config`` froze its parts."""
    for name in config.model.freeze:
        sam.get_submodule(name).requires_grad_(False)
    return {id(p): group["lr"] for group in parameter_groups(sam, config.optim) for p in group["params"]}


def test_embedded_stage3_trains_the_top_of_the_backbone_from_stage2_at_decayed_rates():
    stage1, stage2, stage3 = (load_config(CONFIGS / f"{name}.yaml")
                              for name in ("embedded", "embedded_stage2", "embedded_stage3"))
    assert stage3.model.init == "runs/embedded-stage2/final.safetensors"
    assert stage3.seed not in (stage1.seed, stage2.seed)
    assert (stage3.data, stage3.loss, stage3.prompts) == (stage1.data, stage1.loss, stage1.prompts)
    sam = build_sam("lite", image_size=128)
    rates = optimiser_rates(sam, stage3)
    blocks = sam.image_encoder._blocks
    assert not any(id(p) in rates for block in blocks[:8] for p in block.parameters())
    block_rates = [rates[id(block._project_conv.weight)] for block in blocks[8:]]
    assert block_rates == sorted(block_rates) and block_rates[-1] < rates[id(sam.image_encoder.neck[0].weight)]
    assert rates[id(sam.image_encoder.neck[0].weight)] == stage3.optim.lr


def test_embedded_stage4_continues_stage3_on_other_data_with_its_trainable_layers():
    stage3, stage4 = load_config(CONFIGS / "embedded_stage3.yaml"), load_config(CONFIGS / "embedded_stage4.yaml")
    earlier_seeds = {load_config(CONFIGS / f"{name}.yaml").seed for name in ("embedded", "embedded_stage2")}
    assert stage4.model.init == "runs/embedded-stage3/final.safetensors"
    assert stage4.seed not in earlier_seeds | {stage3.seed}
    assert (stage4.data, stage4.loss, stage4.prompts) == (stage3.data, stage3.loss, stage3.prompts)
    assert stage4.model.freeze == stage3.model.freeze and stage4.optim.layer_decay == stage3.optim.layer_decay
    assert stage4.optim.decay_steps[0] < stage4.steps and stage4.optim.warmup_steps == stage3.optim.warmup_steps


def test_embedded_stage5_continues_stage3_at_a_fifth_of_its_rate_on_other_data():
    stage3, stage5 = load_config(CONFIGS / "embedded_stage3.yaml"), load_config(CONFIGS / "embedded_stage5.yaml")
    earlier_seeds = {load_config(CONFIGS / f"{name}.yaml").seed
                     for name in ("embedded", "embedded_stage2", "embedded_stage3", "embedded_stage4")}
    assert stage5.model.init == "runs/embedded-stage3/final.safetensors"
    assert stage5.seed not in earlier_seeds
    assert (stage5.data, stage5.loss, stage5.prompts) == (stage3.data, stage3.loss, stage3.prompts)
    assert stage5.model.freeze == stage3.model.freeze and stage5.optim.layer_decay == stage3.optim.layer_decay
    assert stage5.optim.lr == stage3.optim.lr / 5 and stage5.optim.decay_steps[0] < stage5.steps


def test_embedded_iou_config_trains_the_iou_head_alone_on_first_prompts_of_real_objects():
    config = load_config(CONFIGS / "embedded_iou.yaml")
    assert config.model.init == "runs/embedded-stage5/final.safetensors" and config.prompts.rounds == 1
    assert [source.kind for source in config.data.sources] == ["dataset"]
    sam = build_sam("lite", image_size=128)
    assert set(optimiser_rates(sam, config)) == {id(p) for p in sam.mask_decoder.iou_prediction_head.parameters()}


def test_embedded_real_config_fine_tunes_stage3_past_its_encoder_on_real_objects_alone():
    stage3, real = load_config(CONFIGS / "embedded_stage3.yaml"), load_config(CONFIGS / "embedded_real.yaml")
    assert real.model.init == "runs/embedded-stage3/final.safetensors" and real.model.freeze == ["image_encoder"]
    assert [(source.kind, source.path) for source in real.data.sources] == [("dataset", "../shared/datasets/COCO_MVal")]
    assert (real.loss, real.prompts) == (stage3.loss, stage3.prompts) and real.optim.lr < stage3.optim.lr
