"""Fixtures for the training tests."""

from __future__ import annotations

import pytest

from train_samples import Sample, synthetic_samples


@pytest.fixture
def samples() -> list[Sample]:
    return synthetic_samples()
