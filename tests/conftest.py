"""Fixtures shared by several test modules."""

from __future__ import annotations

import pytest


@pytest.fixture
def tiny_weights(tmp_path):
    """Weights of a reduced-width, untrained skyfuse-rt (fast, deterministic) in tmp_path."""
    import torch
    from test_networks import TINY

    from engines.networks import build_network, save_weights

    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    save_weights(build_network("skyfuse-rt", TINY["skyfuse-rt"], pretrained=False), path)
    return path
