"""The engine interface every fusion backend implements, classical or learned.

The fuse stage hands an engine batches of frame pairs that are already pre-warped by the rig
calibration into one frame (same H×W): the engine corrects what remains (learned engines register the
thermal frame onto the visible one) and fuses. Colour engines fuse luminance and keep the visible chroma.
`fuse_unwarped` takes the raw visible frames with their homographies instead and does the pre-warp too:
on the host by default, on the device in GPU engines (one upload per input frame).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from core.warp import warp


@dataclass
class FusionResult:
    fused: np.ndarray  # (B, H, W, 3) uint8 BGR
    registered: np.ndarray | None = None  # (B, H, W) uint8: thermal after the engine's own registration
    flow: np.ndarray | None = None  # (B, H, W, 2) float32: displacement applied to the thermal frame


class Engine(ABC):
    """Fuses batches: `visible` (B, H, W, 3) uint8 BGR and `thermal` (B, H, W) uint8, same H×W."""

    name: str = "engine"
    startup_note: str = ""  # what building it took beyond loading (a first-use export), for start-up reports

    @abstractmethod
    def fuse(self, visible: np.ndarray, thermal: np.ndarray) -> FusionResult: ...

    def fuse_unwarped(self, visible: np.ndarray, thermal: np.ndarray, visible_to_output: np.ndarray,
                      extras: bool = True) -> FusionResult:
        """Pre-warp and fuse: `visible` (B, Hv, Wv, 3) uint8 BGR raw frames, `thermal` (B, H, W) uint8,
        `visible_to_output` (B, 3, 3) homographies from visible pixels to output pixels (as from
        Rig.homography_for(visible.shape, (W, H))). The result is at the thermal frame's H×W.
        `extras=False`: the caller needs the fused frames only (GPU engines then skip downloading the
        registered thermal frame and the flow).

        This default warps on the host (core/warp.py, as Rig.warp_visible), then calls `fuse`."""
        check_unwarped(visible, thermal, visible_to_output)
        size = (thermal.shape[2], thermal.shape[1])
        result = self.fuse(np.stack([warp(v, h, size) for v, h in zip(visible, visible_to_output)]), thermal)
        return result if extras else FusionResult(fused=result.fused)

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


def check_unwarped(visible: np.ndarray, thermal: np.ndarray, visible_to_output: np.ndarray) -> None:
    """Raise ValueError unless the inputs follow `Engine.fuse_unwarped`."""
    if visible.ndim != 4 or visible.shape[-1] != 3 or visible.dtype != np.uint8:
        raise ValueError(f"visible must be (B, Hv, Wv, 3) uint8, got {visible.shape} {visible.dtype}")
    if thermal.ndim != 3 or thermal.dtype != np.uint8:
        raise ValueError(f"thermal must be (B, H, W) uint8, got {thermal.shape} {thermal.dtype}")
    matrices = np.asarray(visible_to_output)
    if matrices.shape != (visible.shape[0], 3, 3) or thermal.shape[0] != visible.shape[0]:
        raise ValueError(f"need one 3×3 homography per pair: visible batch {visible.shape[0]}, thermal batch "
                         f"{thermal.shape[0]}, homographies {matrices.shape}")
    if not np.all(np.isfinite(matrices)) or np.any(np.abs(np.linalg.det(matrices)) < 1e-12):
        raise ValueError("homographies must be finite and invertible")
