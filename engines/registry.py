"""Engines by name, for `--engine NAME`. Backends are imported only when asked for, so a machine
without a GPU stack can still list and run the others."""

from __future__ import annotations

import importlib

from core.errors import SkyfuseError

from .base import Engine

# name -> "module:factory"; the factory takes keyword options from the configuration.
ENGINES: dict[str, str] = {
    "blend": "engines.classical:BlendEngine",
    "pyramid": "engines.classical:PyramidEngine",
    "onnxruntime": "engines.onnxruntime_backend:create_onnxruntime_engine",
    "torch": "engines.torch_backend:create_torch_engine",
    "torch-cuda": "engines.torch_cuda:create_torch_cuda_engine",
    "tensorrt": "engines.tensorrt_runtime:create_tensorrt_engine",
    "triton": "engines.triton_backend:create_triton_engine",
    "auto": "engines.auto:create_auto_engine",
}


def create_engine(name: str, **options) -> Engine:
    """Build the engine called `name`, or a plugin named "package.module:Factory" (an Engine subclass
    or function importable on PYTHONPATH); SkyfuseError for an unknown name or bad options."""
    target = ENGINES.get(name) or (name if ":" in name else None)
    if target is None:
        raise SkyfuseError(f"unknown engine {name!r}; choose from {', '.join(sorted(ENGINES))} "
                           "or give a plugin as module:Factory")
    module_name, _, factory_name = target.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), factory_name)
    except (ImportError, AttributeError) as exc:
        raise SkyfuseError(f"engine {name!r} cannot be loaded: {exc}") from None
    try:
        return factory(**options)
    except (TypeError, ValueError) as exc:
        raise SkyfuseError(f"engine {name!r}: {exc}") from None
