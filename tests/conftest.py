"""Shared test set-up: one torch thread (2-core machines: never oversubscribe), deterministic seeds."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
