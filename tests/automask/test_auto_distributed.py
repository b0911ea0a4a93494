"""Sharding across torchrun workers: the helpers, and ``segany auto`` under torchrun (gloo, 2 CPU processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from auto_flags import FAST_FLAGS
from segany import distributed


def test_outside_torchrun_there_is_one_worker(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert (distributed.rank(), distributed.world_size(), distributed.local_rank()) == (0, 1, 0)
    assert distributed.is_main_process()
    assert distributed.shard(list("abcde")) == list("abcde")
    assert distributed.worker_device("cuda") == "cuda"
    with distributed.process_group():
        distributed.barrier()
        assert distributed.gather_to_all({"x": 1}) == [{"x": 1}]


def test_shards_cover_every_item_exactly_once(monkeypatch):
    items = list(range(11))
    monkeypatch.setenv("WORLD_SIZE", "3")
    shards = []
    for rank in range(3):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        shards.append(distributed.shard(items))
        assert distributed.is_main_process() == (rank == 0)
        assert distributed.worker_device("cuda") == f"cuda:{rank}"
        assert distributed.worker_device("cpu") == "cpu"
    assert sorted(sum(shards, [])) == items
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    with pytest.raises(ValueError, match="shard index"):
        distributed.shard(items, index=3, count=3)


def read_outputs(folder) -> dict[str, object]:
    """Every JSON file under ``folder`` (settings excepted), parsed, by relative path."""
    return {
        str(path.relative_to(folder)): json.loads(path.read_text())
        for path in sorted(folder.rglob("*.json"))
        if path.name != "segany-auto.json"
    }


@pytest.mark.parametrize("fmt", ["sa1b", "coco"])
def test_torchrun_output_equals_single_process_output(tmp_path, tiny_checkpoint, photo_collection, fmt):
    command = ["-m", "segany", "auto", str(photo_collection), "--checkpoint", str(tiny_checkpoint), "--format", fmt]
    command += FAST_FLAGS
    # Same thread count on both sides (torchrun sets 1), so that both compute bit for bit alike.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    subprocess.run([sys.executable, *command, "--out", str(single)], check=True, env=env, capture_output=True)
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *command,
         "--out", str(sharded)],
        env=env, capture_output=True, text=True,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert "3 images annotated now" in launched.stdout, "each image should be annotated once, by one worker"
    expected, actual = read_outputs(single), read_outputs(sharded)
    assert len(expected) == (4 if fmt == "coco" else 3)  # coco: the merged file and the 3 per-image parts
    assert actual == expected
