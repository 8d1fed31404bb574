"""The engine interface every fusion backend implements, classical or learned.

The fuse stage hands an engine batches of frame pairs that are already pre-warped by the rig
calibration into one frame (same H×W): the engine corrects what remains (learned engines register the
thermal frame onto the visible one) and fuses. Colour engines fuse luminance and keep the visible chroma.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


@dataclass
class FusionResult:
    fused: np.ndarray  # (B, H, W, 3) uint8 BGR
    registered: np.ndarray | None = None  # (B, H, W) uint8: thermal after the engine's own registration
    flow: np.ndarray | None = None  # (B, H, W, 2) float32: displacement applied to the thermal frame


class Engine(ABC):
    """Fuses batches: `visible` (B, H, W, 3) uint8 BGR and `thermal` (B, H, W) uint8, same H×W."""

    name: str = "engine"

    @abstractmethod
    def fuse(self, visible: np.ndarray, thermal: np.ndarray) -> FusionResult: ...

    def describe(self) -> str:
        """One line for logs and the HUD: backend, network, precision."""
        return self.name

    def close(self) -> None:  # noqa: B027 - engines without resources need nothing here
        """Release backend resources (GPU memory, sessions)."""


def check_batch(visible: np.ndarray, thermal: np.ndarray) -> None:
    """Raise ValueError unless the inputs follow the engine interface."""
    if visible.ndim != 4 or visible.shape[-1] != 3 or visible.dtype != np.uint8:
        raise ValueError(f"visible must be (B, H, W, 3) uint8, got {visible.shape} {visible.dtype}")
    if thermal.ndim != 3 or thermal.dtype != np.uint8:
        raise ValueError(f"thermal must be (B, H, W) uint8, got {thermal.shape} {thermal.dtype}")
    if visible.shape[:3] != thermal.shape:
        raise ValueError(f"visible {visible.shape[:3]} and thermal {thermal.shape} differ in batch or size")
