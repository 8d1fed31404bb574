"""Pairing visible and thermal frames by capture time.

The visible stream sets the output rate: each visible frame is paired with the thermal frame closest in
time (after adding the rig's time offset to thermal times), if one lies within the matching window.
Two strategies:
- `nearest` waits until a thermal frame at or after the visible frame's time has arrived (or the
  thermal stream ended, or `max_wait_s` passed), so it always finds the true nearest; the default for
  recordings.
- `latest` never waits: it uses the closest thermal frame received so far; the default for live view,
  where waiting for the next thermal frame would add up to a thermal frame period of latency.
A slower thermal stream (9 Hz against 30 Hz) makes several visible frames share one thermal frame; that
reuse is allowed up to `max_reuse` extra uses per thermal frame (None = no limit) and counted.
Visible frames with no thermal frame in the window are dropped as `no_thermal_in_window`; thermal frames
never used are counted as `thermal_unused` (expected when thermal runs faster than visible).

Both buffers are bounded (`max_buffered` frames each): a stalled visible camera would otherwise make the
thermal frames pile up without end; the oldest waiting frame is dropped (`<stream>_buffer_full`). Each
stream's capture times are held to a `Timeline`: one frame dated far ahead (or behind) would otherwise
make every later frame look out of order; it is dropped instead (`<stream>_time_jump`,
`<stream>_out_of_order`), and when a stream's clock really moves the pairer follows it after a few frames
(`<stream>_time_resync`), dropping what it still held from the old time base (`<stream>_abandoned`).
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass

from .frame import Frame, Timeline

STRATEGIES = ("nearest", "latest")


@dataclass
class PairingPolicy:
    strategy: str = "nearest"
    time_offset_s: float = 0.0  # added to thermal capture times (rig calibration)
    window_s: float | None = None  # max |Δt| of a pair; None: half a thermal period + jitter_s (latest: one)
    jitter_s: float = 0.005  # allowance for capture-time jitter in the default window
    max_reuse: int | None = None  # extra visible frames one thermal frame may serve; None: unlimited
    max_wait_s: float | None = 0.25  # nearest: stop waiting for a later thermal frame (None: wait, lossless)
    max_buffered: int = 32  # frames each stream may hold while waiting (1 s at 30 fps)

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"pairing strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.window_s is not None and self.window_s <= 0:
            raise ValueError("pairing window must be positive")
        if self.max_reuse is not None and self.max_reuse < 0:
            raise ValueError("max_reuse must be >= 0")
        if self.max_buffered < 1:
            raise ValueError("max_buffered must be at least 1")


@dataclass
class Pair:
    visible: Frame
    thermal: Frame
    dt_s: float  # thermal time (offset applied) minus visible time
    reuse: int  # how many earlier visible frames already used this thermal frame


class _Thermal:
    __slots__ = ("frame", "time_ns", "uses")

    def __init__(self, frame: Frame, time_ns: int):
        self.frame, self.time_ns, self.uses = frame, time_ns, 0


class Pairer:
    """Buffers both streams and emits pairs in visible order; every decision is counted."""

    def __init__(self, policy: PairingPolicy, clock=time.monotonic):
        self.policy = policy
        self.clock = clock
        self.visible: deque[tuple[Frame, float]] = deque()  # (frame, arrival time on `clock`)
        self.thermal: list[_Thermal] = []
        self.thermal_period_s: float | None = None
        self.visible_ended = self.thermal_ended = False
        self.timelines = {"visible": Timeline(), "thermal": Timeline()}
        self.drops: Counter[str] = Counter()  # frames lost: visible without partner, bad times, overflow
        self.counts: Counter[str] = Counter()  # not losses: thermal frames reused or never needed, resyncs

    def add_visible(self, frame: Frame) -> None:
        verdict = self._admit("visible", frame, frame.capture_ns)
        if verdict == "resync":  # what is held from the old time base and not before this frame goes
            kept = [(f, arrived) for f, arrived in self.visible if f.capture_ns < frame.capture_ns]
            self._abandon("visible", len(self.visible) - len(kept))
            self.visible = deque(kept)
        elif verdict != "ok":
            return
        self.visible.append((frame, self.clock()))
        if len(self.visible) > self.policy.max_buffered:
            self.visible.popleft()
            self.drops["visible_buffer_full"] += 1

    def add_thermal(self, frame: Frame) -> None:
        fps = frame.meta.get("fps")
        if fps is not None:
            self.thermal_period_s = 1.0 / fps
        time_ns = frame.capture_ns + int(round(self.policy.time_offset_s * 1e9))
        verdict = self._admit("thermal", frame, time_ns)
        if verdict == "resync":
            kept = [t for t in self.thermal if t.time_ns < time_ns]
            self._abandon("thermal", len(self.thermal) - len(kept))
            self.thermal = kept
        elif verdict != "ok":
            return
        self.thermal.append(_Thermal(frame, time_ns))
        if len(self.thermal) > self.policy.max_buffered:
            oldest = self.thermal.pop(0)
            if not oldest.uses:
                self.drops["thermal_buffer_full"] += 1

    def _admit(self, stream: str, frame: Frame, time_ns: int) -> str:
        """The frame's time held to its stream's timeline (Timeline.admit), refusals and resyncs counted."""
        verdict = self.timelines[stream].admit(time_ns, frame.meta.get("fps"))
        if verdict == "resync":
            self.counts[f"{stream}_time_resync"] += 1
        elif verdict != "ok":
            self.drops[f"{stream}_{verdict}"] += 1
        return verdict

    def _abandon(self, stream: str, count: int) -> None:
        if count:
            self.drops[f"{stream}_abandoned"] += count

    @property
    def thermal_full(self) -> bool:
        """Whether the thermal buffer is at its bound: a lossless reader should read visible frames."""
        return len(self.thermal) >= self.policy.max_buffered

    def end_visible(self) -> None:
        self.visible_ended = True

    def end_thermal(self) -> None:
        self.thermal_ended = True

    @property
    def window_ns(self) -> int:
        if self.policy.window_s is not None:
            return int(self.policy.window_s * 1e9)
        period = self.thermal_period_s or 1 / 30
        share = 1.0 if self.policy.strategy == "latest" else 0.5
        return int((share * period + self.policy.jitter_s) * 1e9)

    def latest_thermal_ns(self) -> int | None:
        return self.thermal[-1].time_ns if self.thermal else None

    def head_visible_ns(self) -> int | None:
        return self.visible[0][0].capture_ns if self.visible else None

    def pop_ready(self) -> list[Pair]:
        """Every pair that can be decided now, in visible order."""
        pairs = []
        while self.visible:
            frame, arrived = self.visible[0]
            if not self._can_decide(frame, arrived):
                break
            self.visible.popleft()
            pair = self._match(frame)
            if pair is None:
                self.drops["no_thermal_in_window"] += 1
            else:
                pairs.append(pair)
            self._prune(frame.capture_ns)
        if self.visible_ended and not self.visible:
            self._prune(None)
        return pairs

    def _can_decide(self, frame: Frame, arrived: float) -> bool:
        if self.policy.strategy == "latest" or self.thermal_ended:
            return True
        latest = self.latest_thermal_ns()
        if latest is not None and latest >= frame.capture_ns:
            return True
        return self.policy.max_wait_s is not None and self.clock() - arrived >= self.policy.max_wait_s

    def _match(self, frame: Frame) -> Pair | None:
        window, best = self.window_ns, None
        for candidate in self.thermal:
            distance = abs(candidate.time_ns - frame.capture_ns)
            if distance > window:
                continue
            if self.policy.max_reuse is not None and candidate.uses > self.policy.max_reuse:
                continue
            if best is None or distance < abs(best.time_ns - frame.capture_ns):
                best = candidate
        if best is None:
            return None
        reuse = best.uses
        best.uses += 1
        if reuse:
            self.counts["thermal_reused"] += 1
        return Pair(frame, best.frame, (best.time_ns - frame.capture_ns) / 1e9, reuse)

    def _prune(self, visible_ns: int | None) -> None:
        """Forget thermal frames too old for any later visible frame (all of them at the end)."""
        if visible_ns is None:
            keep_from = len(self.thermal)
        else:
            horizon = visible_ns - self.window_ns  # visible times only grow: older frames can never match
            newer = (i for i, t in enumerate(self.thermal) if t.time_ns >= horizon)
            keep_from = next(newer, len(self.thermal))
        for old in self.thermal[:keep_from]:
            if old.uses == 0:
                self.counts["thermal_unused"] += 1
        del self.thermal[:keep_from]
