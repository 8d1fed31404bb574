"""Engines loaded as plugins (`--engine engines_for_tests:Name`) by the end-to-end tests."""

import time

from core.errors import SkyfuseError
from engines.classical import BlendEngine


class SlowEngine(BlendEngine):
    """A blend that takes `delay_ms` per call: a stage that cannot keep up with the cameras."""

    def __init__(self, delay_ms: float = 150.0):
        super().__init__()
        self.delay_ms = delay_ms

    def fuse(self, visible, thermal):
        time.sleep(self.delay_ms / 1000)
        return super().fuse(visible, thermal)


class FailingEngine(BlendEngine):
    """A blend that raises on call `fail_at`: a stage that crashes mid-run."""

    def __init__(self, fail_at: int = 10):
        super().__init__()
        self.fail_at, self.calls = fail_at, 0

    def fuse(self, visible, thermal):
        self.calls += 1
        if self.calls >= self.fail_at:
            raise RuntimeError("simulated engine failure")
        return super().fuse(visible, thermal)


class SlowStartEngine(BlendEngine):
    """A blend that takes `start_s` to build (a first-use model export, a GPU context and its graphs)."""

    def __init__(self, start_s: float = 3.0):
        time.sleep(start_s)
        super().__init__()


class UnbuildableEngine(BlendEngine):
    """A backend that is installed but cannot build an engine here (TensorRT on a GPU it does not support)."""

    def __init__(self):
        raise SkyfuseError("cannot build an engine here (test)")
