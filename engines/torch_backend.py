"""`torch` engine: the PyTorch network itself on the CPU (the reference every exported graph is checked
against; slower than ONNX Runtime)."""

from __future__ import annotations

import numpy as np

from .learned import LearnedEngine, Outputs
from .models import engine_network, network_geometry


class TorchBackend:
    name = "torch"

    def __init__(self, network, threads: int = 0):
        import torch

        if threads:
            torch.set_num_threads(int(threads))
        self.network = network.eval()
        self.threads = threads

    def run(self, visible: np.ndarray, thermal: np.ndarray) -> Outputs:
        import torch

        with torch.inference_mode():
            fused, registered, flow = self.network(torch.from_numpy(visible), torch.from_numpy(thermal))
        return fused.numpy(), registered.numpy(), flow.numpy()

    def describe(self) -> str:
        return f"torch (cpu, {self.threads or 'default'} threads)"

    def close(self) -> None:
        self.network = None


def create_torch_engine(model: str = "skyfuse-rt", weights: str | None = None, network=None,
                        threads: int = 0, registration: bool = True) -> LearnedEngine:
    """Engine for `model` (+ `weights`), or for an nn.Module passed as `network` (programmatic use);
    `registration=False` turns the network's registration off."""
    network, name = engine_network(model, weights, network, registration)
    return LearnedEngine(TorchBackend(network, threads), network_geometry(network), model=name)
