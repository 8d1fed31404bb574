"""SkyfuseError now lives in core/errors.py. This alias serves only the stage modules being changed on
the tcp branch in parallel (wire, keys, sink, stage, launcher); tests/test_layers.py holds it to them, and
it goes once they import core.errors."""

from core.errors import SkyfuseError

__all__ = ["SkyfuseError"]
