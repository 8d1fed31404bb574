"""`auto` engine: the fastest backend this machine can run, in the order tensorrt, torch-cuda, onnxruntime.

Each candidate is probed (importable, a GPU visible) and then built; a candidate that fails either step is
skipped with its reason, and `describe()` names the pick and why the faster ones were skipped.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable

from core.errors import SkyfuseError

from .base import Engine

CANDIDATES = ("tensorrt", "torch-cuda", "onnxruntime")


def probe_tensorrt() -> str | None:
    """None when TensorRT and a CUDA device (through pycuda) are usable, else why not."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as exc:
        return f"TensorRT is not installed ({exc})"
    try:
        import pycuda.driver as cuda

        cuda.init()
        if cuda.Device.count() == 0:
            return "no CUDA device"
    except ImportError as exc:
        return f"pycuda is not installed ({exc})"
    except Exception as exc:  # pycuda raises its own LogicError/RuntimeError without a driver
        return f"CUDA is not usable ({exc})"
    return None


def probe_torch_cuda() -> str | None:
    try:
        import torch
    except ImportError as exc:
        return f"PyTorch is not installed ({exc})"
    if torch.version.cuda is None:
        return f"PyTorch {torch.__version__} is a CPU-only build"
    if not torch.cuda.is_available():
        return "PyTorch sees no CUDA device"
    return None


def probe_onnxruntime() -> str | None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        return f"onnxruntime is not installed ({exc})"
    return None


PROBES: dict[str, Callable[[], str | None]] = {
    "tensorrt": probe_tensorrt, "torch-cuda": probe_torch_cuda, "onnxruntime": probe_onnxruntime,
}


def create_auto_engine(**options) -> Engine:
    """The first candidate that probes and builds; `options` go to it where its factory accepts them."""
    from .registry import create_engine

    skipped = []
    for name in CANDIDATES:
        reason = PROBES[name]()
        if reason is None:
            accepted = inspect.signature(_factory(name)).parameters
            chosen = {k: v for k, v in options.items() if k in accepted}
            try:
                engine = create_engine(name, **chosen)
            except SkyfuseError as exc:
                reason = f"failed to start ({exc})"
            else:
                ignored = sorted(set(options) - set(chosen))
                why = f"auto picked {name}" + (f"; skipped {'; '.join(skipped)}" if skipped else "")
                if ignored:
                    why += f"; options not used by {name}: {', '.join(ignored)}"
                engine.selection = why
                return engine
        skipped.append(f"{name}: {reason}")
    raise SkyfuseError("auto: no engine backend is usable: " + "; ".join(skipped))


def _factory(name: str) -> Callable:
    from .registry import ENGINES

    module_name, factory_name = ENGINES[name].split(":")
    return getattr(importlib.import_module(module_name), factory_name)
