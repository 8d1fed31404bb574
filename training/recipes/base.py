"""The interface between the trainer and a network family's training recipe."""

from __future__ import annotations

import torch
from torch import nn


class Recipe:
    """Owns the deployable network, any training-only networks (discriminators, translators) and their
    optimisers. `train_step` takes a batch dict (see training.dataset) and returns named loss values."""

    def __init__(self, network: nn.Module, lr: float):
        self.network = network
        self.lr = lr
        self.modules: dict[str, nn.Module] = {"network": network}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}

    def adam(self, name: str, *modules: nn.Module, lr: float | None = None, betas=(0.9, 0.999)):
        params = [p for m in modules for p in m.parameters()]
        self.optimizers[name] = torch.optim.Adam(params, lr=lr or self.lr, betas=betas)
        return self.optimizers[name]

    def to(self, device: torch.device) -> Recipe:
        for m in self.modules.values():
            m.to(device)
        return self

    def train(self, mode: bool = True) -> None:
        for m in self.modules.values():
            m.train(mode)

    def plan(self, total_steps: int) -> None:
        """Told the planned number of steps before training (recipes with phases use it)."""

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        raise NotImplementedError

    @staticmethod
    def step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def state_dict(self) -> dict:
        return {
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        for k, m in self.modules.items():
            m.load_state_dict(state["modules"][k])
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
