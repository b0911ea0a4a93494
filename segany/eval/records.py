"""Resumable evaluation runs: per-image results appended to a JSON-lines file as they finish.

An evaluation over thousands of images must survive Ctrl-C and crashes. Each model's results
on a protocol go to ``records/<protocol>/<model>-<digest>.jsonl``, where the digest covers
every setting that changes the results (checkpoint, protocol options, dataset), so re-running
the same command skips finished images, and changing a setting starts a fresh file instead
of mixing results.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from segany.annotations import plain_json_value
from segany.datasets import Sample, readable_samples
from segany.eval.report import safe_file_name
from segany.io import atomic_write

log = logging.getLogger("segany.eval")


class RecordLog:
    """One JSON object per line, one line per image, keyed by ``record["image"]``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: dict[str, dict] = {}
        if path.exists():
            self._load()

    def _load(self) -> None:
        lines = self.path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines) - 1:  # the line being written when the run was stopped
                    log.warning("dropping an unfinished last line of %s", self.path)
                    self._rewrite()
                    return
                raise ValueError(f"{self.path} line {number + 1} is not JSON: delete the file to start over") from None
            self.records[str(record["image"])] = record

    def _rewrite(self) -> None:
        with atomic_write(self.path, "w") as stream:
            for record in self.records.values():
                stream.write(json.dumps(record, default=plain_json_value) + "\n")

    def append(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as stream:
            stream.write(json.dumps(record, default=plain_json_value) + "\n")
            stream.flush()
            os.fsync(stream.fileno())
        self.records[str(record["image"])] = record


def record_log(out: Path, protocol: str, model: str, settings: dict) -> RecordLog:
    """The log of ``model`` on ``protocol`` under ``out`` for exactly these ``settings``."""
    digest = hashlib.blake2b(json.dumps(settings, sort_keys=True, default=str).encode(), digest_size=6).hexdigest()
    return RecordLog(out / "records" / protocol / f"{safe_file_name(model)}-{digest}.jsonl")


def evaluate_dataset(
    dataset: Sequence[Sample],
    records: RecordLog,
    evaluate: Callable[[Sample, np.ndarray], dict],
    description: str,
) -> list[dict]:
    """Run ``evaluate(sample, image)`` on every readable image not done yet; all records, in dataset order.

    Unreadable images are logged and skipped (see :func:`segany.datasets.readable_samples`).
    """
    pending = [sample for sample in dataset if str(sample.id) not in records.records]
    with tqdm(total=len(pending), desc=description, unit="image") as bar:
        for sample, image in readable_samples(pending):
            record = evaluate(sample, image)
            records.append({"image": str(sample.id), **record})
            bar.update()
    return [records.records[str(sample.id)] for sample in dataset if str(sample.id) in records.records]
