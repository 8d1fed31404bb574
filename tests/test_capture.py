"""The capture stage against sources that misbehave: too slow for their frame rate, or gone for a while."""

from __future__ import annotations

import threading
import time

import numpy as np

from pipeline.capture import CaptureStage
from pipeline.frame import EndOfStream, Frame
from pipeline.sources import Source, SyntheticSource
from pipeline.stage import StopFlag
from pipeline.synthetic import FlightConfig, SyntheticFlight
from pipeline.wire import Receiver, Sender


class Drain:
    """The receiving end of a capture: takes every frame, noting the monotonic time it arrived."""

    def __init__(self, endpoint: str):
        self.receiver = Receiver(endpoint, lossless=False, queue_size=10_000, high_water_mark=10_000)
        self.frames: list[tuple[float, Frame]] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not isinstance(message := self.receiver.recv(100), EndOfStream):
            if message is not None:
                self.frames.append((time.monotonic(), message))

    def close(self) -> None:
        self.thread.join(10)
        self.receiver.close()


def run_capture(source: Source, endpoint: str, stop: StopFlag | None = None) -> tuple[dict, list]:
    """Run a live-mode capture of `source` at its native pace until it ends or `stop` is set."""
    drain = Drain(endpoint)
    stop = stop or StopFlag()
    sender = Sender(endpoint, lossless=False, high_water_mark=10_000, stop=stop)
    try:
        summary = CaptureStage(source, sender, pace=True).run(stop)
    finally:
        sender.close()
        drain.close()
    return summary, drain.frames


class SlowFlight(SyntheticSource):
    """The synthetic flight on a machine too slow for it: every frame takes `slowdown` frame periods to
    render. Counts the frames it rendered and the time that took."""

    def __init__(self, slowdown: float, frames: int):
        flight = SyntheticFlight(FlightConfig(visible_size=(160, 120), thermal_size=(160, 128)))
        super().__init__(flight, "visible", frames)
        self.rendered, self.render_s = 0, 0.0
        render = self._render

        def slow_render(index: int) -> np.ndarray:
            started = time.monotonic()
            image = render(index)
            time.sleep(max(0.0, slowdown / self.fps - (time.monotonic() - started)))
            self.rendered += 1
            self.render_s += time.monotonic() - started
            return image

        self._render = slow_render


def test_a_live_replay_slower_than_its_rate_skips_ahead_and_delivers_what_it_can_render(tmp_path):
    source = SlowFlight(slowdown=1.3, frames=120)  # 4 s of flight at 30 fps, each frame 43 ms to render
    started = time.monotonic()
    summary, frames = run_capture(source, f"ipc://{tmp_path}/visible")
    elapsed = time.monotonic() - started
    skipped = summary["drops"].get("late_skipped", 0)
    # Nothing rendered is thrown away, and every frame of the 4 s is either sent or skipped unrendered.
    assert summary["frames"] == len(frames) == source.rendered
    assert summary["frames"] + skipped == 120 and skipped > 0
    assert "late" not in summary["drops"]
    # At least 90 % of what this source can render in the time it had (measured, so a loaded machine
    # that renders slower still passes).
    assert len(frames) >= 0.9 * elapsed / (source.render_s / source.rendered)
    # Always the newest frame: its age at arrival stays about one render, never growing with the run.
    ages = [arrived - frame.capture_ns / 1e9 for arrived, frame in frames]
    assert np.median(ages[-len(ages) // 4:]) < 0.25
    assert [f.seq for _, f in frames] == sorted({f.seq for _, f in frames})
