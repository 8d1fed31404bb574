"""A stage's statistics: latency percentiles over a bounded recent window, in memory fixed from the start."""

from __future__ import annotations

from pipeline.stats import LatencyStats, StageStats


def test_latency_percentiles_cover_the_most_recent_window_and_count_every_sample():
    stats = LatencyStats(capacity=1000)
    for _ in range(5000):
        stats.add(500.0)  # an early stall, long since over
    for ms in range(1000):
        stats.add(float(ms % 100))
    summary = stats.summary()
    assert summary["count"] == 6000
    assert summary["window"] == 1000
    assert summary["max_ms"] == 99.0  # the stall has left the window
    assert 49.0 <= summary["p50_ms"] <= 50.0


def test_latency_memory_is_allocated_once_and_never_grows():
    stats = LatencyStats(capacity=1000)
    before = stats.ring.nbytes
    for ms in range(10_000):
        stats.add(float(ms))
    assert stats.ring.nbytes == before == 4000


def test_a_stage_with_a_few_samples_reports_them_exactly():
    stage = StageStats("sink")
    assert "end_to_end" not in stage.summary()["latency"]
    for ms in (10.0, 20.0, 30.0):
        stage.add_latency("end_to_end", ms)
    latency = stage.summary()["latency"]["end_to_end"]
    assert latency["count"] == 3 and latency["window"] == 3
    assert latency["mean_ms"] == 20.0 and latency["p50_ms"] == 20.0 and latency["max_ms"] == 30.0
