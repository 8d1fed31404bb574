"""`torch-cuda` engine: the PyTorch network on a CUDA GPU, half precision (autocast) and CUDA graphs.

The whole engine step runs on the device (issue 8, "GPU data path"): one upload of the uint8 BGR visible
batch and one of the uint8 thermal batch, then (with `fuse_unwarped`, which takes the raw visible frames)
the calibration pre-warp (engines/device_warp.py), luminance/chroma split, padding, network, crop and colour
recombination on the GPU, and one download of each result (of the fused frames only with extras=False).
Autocast keeps what it deems precision-critical (grid_sample's coordinates, reductions, softmax) in float32;
the pre-warp runs outside autocast, in float32. CUDA graphs: one graph per input shape (capture on first
use, replay after), which removes the per-kernel launch cost of small batches.

The colour maths follow OpenCV's BGR<->YCrCb (BT.601, delta 128), so results match the CPU engines'
engines/colour.py within a gray level. Runs on the CPU too (device="cpu", no graphs, no half), which is how
the CPU tests check this data path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.errors import SkyfuseError

from .base import Engine, FusionResult, check_batch, check_unwarped
from .device_warp import DeviceWarp
from .learned import Geometry
from .models import engine_network, network_geometry

MAX_GRAPHS = 8  # captured shapes kept (each holds its own input/output buffers)


def bgr_to_ycrcb(bgr):
    """(B, H, W, 3) float BGR 0..255 -> Y, Cr, Cb (B, H, W), as cv2.COLOR_BGR2YCrCb."""
    b, g, r = bgr.unbind(-1)
    y = 0.299 * r + 0.587 * g + 0.114 * b
    return y, (r - y) * 0.713 + 128.0, (b - y) * 0.564 + 128.0


def ycrcb_to_bgr(y, cr, cb):
    """Inverse of bgr_to_ycrcb, rounded and clipped to uint8 (B, H, W, 3)."""
    import torch

    r = y + 1.403 * (cr - 128.0)
    g = y - 0.714 * (cr - 128.0) - 0.344 * (cb - 128.0)
    b = y + 1.773 * (cb - 128.0)
    return torch.stack((b, g, r), dim=-1).add_(0.5).clamp_(0, 255).to(torch.uint8)


@dataclass
class _Captured:
    graph: object
    inputs: tuple
    outputs: tuple


class TorchCudaEngine(Engine):
    name = "torch-cuda"

    def __init__(self, network, geometry: Geometry, model: str = "", half: bool = True,
                 cuda_graphs: bool = True, device: str = "cuda"):
        import torch

        if geometry.fixed_size:
            raise SkyfuseError("torch-cuda runs dynamic-size networks only; use onnxruntime for this one")
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise SkyfuseError("torch-cuda: PyTorch sees no CUDA device")
        self.network = network.eval().to(self.device)
        self.geometry, self.model = geometry, model
        self.half = half and self.device.type == "cuda"
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        self.graphs: dict[tuple, _Captured] = {}
        self.warp = DeviceWarp(self.device)
        self.selection = ""

    # --- network on device tensors ------------------------------------------------------------------
    def _forward(self, visible, thermal):
        import torch

        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.float16,
                                                    enabled=self.half, cache_enabled=False):
            outputs = self.network(visible, thermal)
        return tuple(o.float() for o in outputs)

    def _capture(self, shape: tuple) -> _Captured:
        import torch

        if len(self.graphs) >= MAX_GRAPHS:
            self.graphs.pop(next(iter(self.graphs)))
        inputs = (torch.rand(shape, device=self.device), torch.rand(shape, device=self.device))
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the graph (cuDNN autotuning, lazy allocations)
            for _ in range(3):
                self._forward(*inputs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = self._forward(*inputs)
        self.graphs[shape] = _Captured(graph, inputs, outputs)
        return self.graphs[shape]

    def run_device(self, visible, thermal):
        """(fused, registered, flow) for (B, 1, H, W) float32 device tensors. With CUDA graphs the outputs
        are the graph's own buffers: read them before the next call."""
        if not self.cuda_graphs:
            return self._forward(visible, thermal)
        shape = tuple(visible.shape)
        captured = self.graphs.get(shape) or self._capture(shape)
        captured.inputs[0].copy_(visible)
        captured.inputs[1].copy_(thermal)
        captured.graph.replay()
        return captured.outputs

    # --- the engine step, on the device ------------------------------------------------------------
    def fuse(self, visible: np.ndarray, thermal: np.ndarray) -> FusionResult:
        check_batch(visible, thermal)
        return self._fuse_on_device(self._upload(visible).float(), self._upload(thermal), extras=True)

    def fuse_unwarped(self, visible: np.ndarray, thermal: np.ndarray, visible_to_output: np.ndarray,
                      extras: bool = True) -> FusionResult:
        """Engine.fuse_unwarped with the pre-warp on the device: the raw visible frames are uploaded once."""
        check_unwarped(visible, thermal, visible_to_output)
        size = (thermal.shape[2], thermal.shape[1])
        warped = self.warp(self._upload(visible), visible_to_output, size)  # (B, 3, H, W) float
        return self._fuse_on_device(warped.permute(0, 2, 3, 1), self._upload(thermal), extras)

    def _upload(self, array: np.ndarray):
        import torch

        tensor = torch.from_numpy(array)
        if self.device.type != "cuda":
            return tensor
        return tensor.pin_memory().to(self.device, non_blocking=True)  # page-locked: an asynchronous copy

    def _fuse_on_device(self, visible, thermal8, extras: bool) -> FusionResult:
        """`visible` (B, H, W, 3) float BGR in 0..255 and `thermal8` (B, H, W) uint8, both on the device."""
        import torch

        from .networks import pad_to_multiple

        y, cr, cb = bgr_to_ycrcb(visible)
        height, width = visible.shape[1:3]
        vis, ir = (pad_to_multiple(x.unsqueeze(1) / 255.0, self.geometry.size_multiple)
                   for x in (y, thermal8.float()))
        fused, registered, flow = (o[:, :, :height, :width] for o in self.run_device(vis.contiguous(), ir))
        fused_bgr = ycrcb_to_bgr(fused[:, 0] * 255.0, cr, cb).cpu().numpy()
        if not extras:
            return FusionResult(fused=fused_bgr)
        registered8 = (registered[:, 0] * 255.0).add_(0.5).clamp_(0, 255).to(torch.uint8)
        flow = flow.permute(0, 2, 3, 1).contiguous()
        return FusionResult(fused=fused_bgr, registered=registered8.cpu().numpy(), flow=flow.cpu().numpy())

    @property
    def precision(self) -> str:
        """What the network computes in: fp16 autocast on a GPU (float32 where autocast keeps it), else
        fp32."""
        return "fp16 autocast" if self.half else "fp32"

    def describe(self) -> str:
        text = (f"torch-cuda ({self.device}, {self.precision}, "
                f"CUDA graphs {'on' if self.cuda_graphs else 'off'}) model={self.model or '?'}")
        return f"{text} ({self.selection})" if self.selection else text

    def close(self) -> None:
        self.graphs.clear()
        self.network = None


def create_torch_cuda_engine(model: str = "skyfuse-rt", weights: str | None = None, network=None,
                             half: bool = True, cuda_graphs: bool = True, device: str = "cuda",
                             registration: bool = True) -> Engine:
    """Engine for `model` (+ `weights`), or an nn.Module passed as `network`; `registration=False` turns
    the network's registration off."""
    network, name = engine_network(model, weights, network, registration)
    return TorchCudaEngine(network, network_geometry(network), model=name, half=half, cuda_graphs=cuda_graphs,
                           device=device)
