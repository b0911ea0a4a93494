"""``segany bench``: one side's measurements, and clear errors for bad flags.

The full official-vs-segany run needs full-size models (minutes on a CPU): it is the slow test.
"""

from __future__ import annotations

import json

import pytest
import torch

from oracle import build_model_pair, official  # noqa: F401
from segany.build import CONFIGS, save_sam
from segany.cli import main as cli_main


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return save_sam(build_model_pair(seed=0, config=CONFIGS["tiny"])[1], tmp_path_factory.mktemp("bench") / "t.safetensors")


@pytest.mark.parametrize("mode", ["exact", "int8"])
def test_one_side_reports_every_measure(tiny_checkpoint, capsys, mode):
    code = cli_main(["bench", "--side", "segany", "--model-type", "tiny", "--checkpoint", str(tiny_checkpoint),
                     "--prompts", "2", "--points-per-side", "2", "--mode", mode])
    assert code == 0
    results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(results) == {"encoder_s", "predict_s", "automatic_s", "peak_mib"}
    assert all(value > 0 for value in results.values())


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--prompts", "0"], "--prompts must be at least 1"),
        (["--mode", "fp16"], "needs a GPU"),
        (["--mode", "turbo"], "unknown speed mode"),
        (["--model-type", "tiny"], "official package builds"),
        (["--image", "missing.jpg"], "missing.jpg"),
        pytest.param(["--gpu-only"], "needs a CUDA GPU",
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")),
    ],
)
def test_bad_flags_exit_2_with_one_line(flags, message, capsys):
    assert cli_main(["bench", *flags]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1


@pytest.mark.slow
def test_full_table_on_vit_b(capsys):
    assert cli_main(["bench", "--cpu-only", "--prompts", "2", "--points-per-side", "4"]) == 0
    out = capsys.readouterr().out
    for measure in ("encoder (set_image)", "predict, 1 point", "automatic, 4x4 points", "peak memory"):
        assert measure in out
