"""Learned engines: a network run by a backend (ONNX Runtime, PyTorch, TensorRT) behind the Engine interface.

The wrapper owns everything that is the same for every backend: luminance split (YCrCb, engines/colour.py),
scaling to [0, 1], padding H×W up to the network's size multiple (edge pixels repeated, cropped off again),
and the recombination with the visible chroma. A backend only maps float32 tensors to float32 tensors.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from .base import Engine, FusionResult, check_batch
from .colour import merge_luma, split_luma

INPUT_NAMES = ("visible", "thermal")
OUTPUT_NAMES = ("fused", "registered", "flow")

Outputs = tuple[np.ndarray, np.ndarray, np.ndarray]  # fused (B,1,H,W), registered (B,1,H,W), flow (B,2,H,W)


class Pending(Protocol):
    def wait(self) -> Outputs: ...


class Backend(Protocol):
    """Runs a network: `visible`, `thermal` (B, 1, H, W) float32 in [0, 1] -> (fused, registered, flow)."""

    name: str

    def run(self, visible: np.ndarray, thermal: np.ndarray) -> Outputs: ...

    def describe(self) -> str: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Geometry:
    """What a network accepts: H and W multiples of `size_multiple`; `fixed_size` (H, W) when the exported
    graph has a static size (the frames are then resized to it and the outputs resized back)."""

    size_multiple: int = 1
    fixed_size: tuple[int, int] | None = None

    def padded(self, height: int, width: int) -> tuple[int, int]:
        m = self.size_multiple
        return -(-height // m) * m, -(-width // m) * m


class _Done:
    def __init__(self, outputs: Outputs):
        self.outputs = outputs

    def wait(self) -> Outputs:
        return self.outputs


class LearnedEngine(Engine):
    """Engine interface for a network backend. `selection` (set by `auto`) explains why it was picked."""

    def __init__(self, backend: Backend, geometry: Geometry, model: str = "", precision: str = "fp32"):
        self.backend, self.geometry, self.model, self.precision = backend, geometry, model, precision
        self.name = backend.name
        self.selection = ""

    def fuse(self, visible: np.ndarray, thermal: np.ndarray) -> FusionResult:
        return self._finish(*self._submit(visible, thermal))

    def fuse_stream(self, pairs: Iterable[tuple[np.ndarray, np.ndarray]], depth: int = 2
                    ) -> Iterator[FusionResult]:
        """Fuse batches in order, keeping up to `depth` in flight on backends that run asynchronously
        (TensorRT: the copies of batch n+1 overlap the compute of batch n). Same results as `fuse`."""
        in_flight: deque = deque()
        for visible, thermal in pairs:
            in_flight.append(self._submit(visible, thermal))
            if len(in_flight) >= depth:
                yield self._finish(*in_flight.popleft())
        while in_flight:
            yield self._finish(*in_flight.popleft())

    def _submit(self, visible: np.ndarray, thermal: np.ndarray):
        check_batch(visible, thermal)
        lumas, chromas = zip(*(split_luma(frame) for frame in visible))
        vis = np.stack(lumas)[:, None] * np.float32(1 / 255)
        ir = thermal[:, None].astype(np.float32) * np.float32(1 / 255)
        size = visible.shape[1:3]
        vis, ir = self._to_network(vis, size), self._to_network(ir, size)
        submit = getattr(self.backend, "submit", None)
        pending = submit(vis, ir) if submit else _Done(self.backend.run(vis, ir))
        return pending, chromas, size

    def _finish(self, pending: Pending, chromas, size: tuple[int, int]) -> FusionResult:
        fused, registered, flow = (self._from_network(x, size) for x in pending.wait())
        fused_bgr = np.stack([merge_luma(f[0] * 255.0, c) for f, c in zip(fused, chromas)])
        registered8 = np.clip(registered[:, 0] * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return FusionResult(fused=fused_bgr, registered=registered8,
                            flow=np.ascontiguousarray(flow.transpose(0, 2, 3, 1), dtype=np.float32))

    def _to_network(self, x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        if self.geometry.fixed_size is not None:
            return _resize(x, self.geometry.fixed_size)
        ph, pw = self.geometry.padded(*size)
        if (ph, pw) == size:
            return np.ascontiguousarray(x)
        return np.pad(x, ((0, 0), (0, 0), (0, ph - size[0]), (0, pw - size[1])), mode="edge")

    def _from_network(self, x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if self.geometry.fixed_size is None:
            return x[:, :, : size[0], : size[1]]
        resized = _resize(x, size)
        if x.shape[1] == 2:  # a flow in pixels of the network's frame: rescale to the caller's pixels
            resized[:, 0] *= size[1] / x.shape[3]
            resized[:, 1] *= size[0] / x.shape[2]
        return resized

    def describe(self) -> str:
        text = f"{self.backend.describe()} model={self.model or '?'} precision={self.precision}"
        return f"{text} ({self.selection})" if self.selection else text

    def close(self) -> None:
        self.backend.close()


def _resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    b, c = x.shape[:2]
    planes = x.reshape(b * c, *x.shape[2:])
    out = np.stack([cv2.resize(p, (size[1], size[0]), interpolation=cv2.INTER_LINEAR) for p in planes])
    return out.reshape(b, c, *size)
