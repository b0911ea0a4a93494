"""Training on a GPU: bf16 autocast, the whole model trainable, and torchrun with NCCL.

Skipped without a CUDA GPU (CI has none); run on one with ``pytest tests/train/test_training_cuda.py``.
"""

import pytest
import torch

from segany.build import build_sam
from segany.train.loop import train

from train_samples import fast_config, run_metrics, synthetic_samples, train_under_torchrun

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_whole_tiny_model_overfits_a_few_synthetic_masks_on_gpu(tmp_path):
    config = fast_config(steps=200, batch_size=1, log_every=10, checkpoint_every=100, device="cuda",
                         optim__lr=5e-3, optim__warmup_steps=5, optim__grad_clip_norm=1.0, prompts__rounds=2)
    train(config, tmp_path, dataset=synthetic_samples(1))
    records = run_metrics(tmp_path)
    assert records[0]["miou"] < 0.5
    assert records[-1]["miou"] >= 0.9, records[-1]
    trained = build_sam("auto", checkpoint=tmp_path / "final.safetensors")
    assert all(torch.isfinite(value).all() for value in trained.state_dict().values())


def test_torchrun_with_nccl_trains_on_the_gpu(tmp_path):
    result = train_under_torchrun(tmp_path / "run", processes=1, device="cuda")
    assert result.returncode == 0, result.stderr[-3000:]
    records = run_metrics(tmp_path / "run")
    assert len(records) == fast_config().steps and all(record["loss"] == record["loss"] for record in records)
    assert (tmp_path / "run" / "final.safetensors").is_file()
