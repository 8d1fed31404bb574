"""Batching across streams: flush at max batch or max wait; per-stream order, metadata and stats."""

from __future__ import annotations

import numpy as np
import pytest

from engines.base import Engine, FusionResult
from engines.batching import BatchScheduler
from engines.classical import BlendEngine


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Recording(Engine):
    """Blend engine that records the batch size of every call."""

    name = "recording"

    def __init__(self):
        self.inner, self.calls = BlendEngine(), []

    def fuse(self, visible, thermal) -> FusionResult:
        self.calls.append(visible.shape[0])
        return self.inner.fuse(visible, thermal)


def pair(seed: int, size=(12, 16)):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (*size, 3), dtype=np.uint8), rng.integers(0, 256, size, dtype=np.uint8)


def test_three_streams_are_fused_in_batches_with_order_metadata_and_results_kept():
    engine, clock = Recording(), Clock()
    scheduler = BatchScheduler(engine, max_batch=4, max_wait_s=1.0, clock=clock)
    outputs, pairs = [], {}
    for seq in range(4):
        for stream in ("drone-a", "drone-b", "drone-c"):
            visible, thermal = pair(seq * 10 + len(stream) + ord(stream[-1]))
            pairs[(stream, seq)] = (visible, thermal)
            outputs += scheduler.submit(stream, visible, thermal, meta={"seq": seq, "capture_ns": 1000 * seq})
            clock.now += 0.001
    outputs += scheduler.flush()
    assert engine.calls == [4, 4, 4]
    for stream in ("drone-a", "drone-b", "drone-c"):
        mine = [o for o in outputs if o.stream == stream]
        assert [o.meta["seq"] for o in mine] == [0, 1, 2, 3]
        assert [o.meta["capture_ns"] for o in mine] == [0, 1000, 2000, 3000]
        for o in mine:  # batched result == the same pair fused alone
            visible, thermal = pairs[(stream, o.meta["seq"])]
            alone = BlendEngine().fuse(visible[None], thermal[None])
            assert np.array_equal(o.fused, alone.fused[0]) and np.array_equal(o.registered, thermal)
    assert {o.batch_size for o in outputs} == {4}


def test_a_lone_stream_is_flushed_when_its_oldest_pair_has_waited_max_wait():
    engine, clock = Recording(), Clock()
    scheduler = BatchScheduler(engine, max_batch=8, max_wait_s=0.010, clock=clock)
    assert scheduler.time_to_deadline() is None
    assert scheduler.submit("a", *pair(1)) == []
    clock.now += 0.004
    assert scheduler.submit("a", *pair(2)) == []
    assert scheduler.time_to_deadline() == pytest.approx(0.006)
    assert scheduler.poll() == []
    clock.now += 0.006
    out = scheduler.poll()
    assert [o.batch_size for o in out] == [2, 2] and engine.calls == [2]
    assert out[0].waited_s == pytest.approx(0.010) and out[1].waited_s == pytest.approx(0.006)
    assert scheduler.waiting == 0


def test_a_pair_of_another_size_flushes_the_waiting_ones_first():
    engine = Recording()
    scheduler = BatchScheduler(engine, max_batch=4, max_wait_s=1.0, clock=Clock())
    scheduler.submit("a", *pair(1, (12, 16)))
    scheduler.submit("b", *pair(2, (12, 16)))
    out = scheduler.submit("c", *pair(3, (20, 24)))
    assert [o.stream for o in out] == ["a", "b"] and engine.calls == [2]
    assert [o.stream for o in scheduler.flush()] == ["c"] and engine.calls == [2, 1]


def test_per_stream_stats_count_batches_and_waits():
    clock = Clock()
    scheduler = BatchScheduler(Recording(), max_batch=2, max_wait_s=1.0, clock=clock)
    scheduler.submit("a", *pair(1))
    clock.now += 0.002
    scheduler.submit("b", *pair(2))  # flushes a+b
    scheduler.submit("a", *pair(3))
    clock.now += 0.004
    scheduler.flush()
    a, b = scheduler.stats["a"].summary(), scheduler.stats["b"].summary()
    assert a == {"submitted": 2, "fused": 2, "mean_batch": 1.5, "mean_wait_ms": 3.0, "max_wait_ms": 4.0}
    assert b == {"submitted": 1, "fused": 1, "mean_batch": 2.0, "mean_wait_ms": 0.0, "max_wait_ms": 0.0}


def test_bad_limits_are_rejected():
    with pytest.raises(ValueError, match="max_batch"):
        BatchScheduler(Recording(), max_batch=0)
    with pytest.raises(ValueError, match="max_wait_s"):
        BatchScheduler(Recording(), max_wait_s=-1)
