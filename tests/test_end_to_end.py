"""The whole pipeline as a user runs it: real stage processes over ipc, recordings read back."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.recorder import read_video
from pipeline.sidecar import read_sidecar

TESTS = Path(__file__).resolve().parent
# Small frames keep the suite fast on a 2-core CI machine; the geometry is the same as the demo's.
SMALL = "visible_size=480x270,thermal_size=320x256,people=10,vehicles=4"


def skyfuse(*args: str, timeout: float = 120, **popen) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True,
                          timeout=timeout, env=_env(), **popen)


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    return env


def start_run(*args: str) -> subprocess.Popen:
    """`skyfuse run` on the small synthetic flight, in the background, its output captured."""
    return subprocess.Popen([sys.executable, "-m", "pipeline", "run", "--visible", f"synthetic:{SMALL}",
                             "--thermal", f"synthetic:{SMALL}", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())


def stats_of(output: Path) -> dict:
    return json.loads(output.with_name("stats.json").read_text())


def children_of(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def command_of(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def test_lossless_run_records_every_frame_at_the_source_rate(tmp_path):
    output = tmp_path / "fused.mp4"
    result = skyfuse("run", "--visible", f"synthetic:{SMALL}", "--thermal",
                     f"synthetic:{SMALL},thermal_fps=9", "--frames", "90", "--mode", "lossless",
                     "--output", str(output))
    assert result.returncode == 0, result.stderr
    video = read_video(output)
    assert video.frames == 90 and video.fps == pytest.approx(30)
    assert video.size == (320, 256), "the fused view is the thermal camera's view"
    records = read_sidecar(output.with_name("fused.mp4.frames.jsonl"))
    assert [r["seq"] for r in records] == list(range(90))
    assert [r["slot"] for r in records] == list(range(90))
    thermal_seqs = [r["thermal"]["seq"] for r in records]
    assert thermal_seqs == sorted(thermal_seqs) and len(set(thermal_seqs)) in (27, 28), "9 Hz reused"
    assert all(abs(r["thermal"]["dt_ms"]) <= 1000 / 18 + 1 for r in records)
    stats = stats_of(output)
    assert stats["frames_recorded"] == 90 and stats["complete"] and stats["drops_total"] == 0
    assert list(stats["stages"]) == ["capture.visible", "capture.thermal", "fuse", "sink"]
    assert stats["stages"]["capture.visible"]["frames"] == 90
    assert stats["stages"]["capture.thermal"]["frames"] >= 27  # 3 s at 9 Hz; it runs until the run ends
    assert stats["stages"]["sink"]["latency"]["end_to_end"]["count"] == 90
    assert stats["transit"] == {"capture.visible->fuse": {"sent": 90, "received": 90, "lost": 0},
                                "fuse->sink": {"sent": 90, "received": 90, "lost": 0}}
    assert "recorded 90 frames" in result.stdout and "capture.thermal" in result.stdout


def test_frames_lost_with_a_killed_stage_are_reconciled_in_the_statistics(tmp_path):
    output = tmp_path / "fused.mp4"
    process = start_run("--frames", "600", "--mode", "lossless", "--pace", "native", "--output", str(output))
    sidecar = output.with_name("fused.mp4.frames.jsonl")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(read_sidecar(sidecar) if sidecar.exists() else []) < 30:
        time.sleep(0.1)
    fuse = next(pid for pid in children_of(process.pid) if "fuse" in command_of(pid).split())
    os.kill(fuse, signal.SIGKILL)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1 and "stage fuse killed by SIGKILL" in stderr
    stats = stats_of(output)
    assert not stats["complete"]
    hop = stats["transit"]["capture.visible->fuse"]
    assert hop["received"] is None and "no statistics from fuse (killed by SIGKILL)" in hop["why"]
    assert hop["sent"] > stats["frames_recorded"] >= 30


def test_live_mode_with_a_slow_engine_keeps_latency_flat_and_counts_drops(tmp_path):
    output = tmp_path / "fused.mkv"
    result = skyfuse("run", "--visible", f"synthetic:{SMALL}", "--thermal", f"synthetic:{SMALL}",
                     "--frames", "60", "--mode", "live", "--engine", "engines_for_tests:SlowEngine",
                     "--output", str(output))
    assert result.returncode == 0, result.stderr
    stats = stats_of(output)
    recorded = stats["frames_recorded"]
    assert 3 <= recorded < 60
    drops = stats["drops"]
    assert stats["drops_total"] > 0
    assert drops.get("fuse:engine_busy", 0) + sum(v for k, v in drops.items() if "queue" in k) > 0
    # A queue that never drops would hold ~60 frames x 150 ms: latency would climb towards 9 s.
    latency = stats["stages"]["sink"]["latency"]["end_to_end"]
    assert latency["max_ms"] < 2000
    video = read_video(output)
    assert video.frames == recorded
    assert video.duration_s == pytest.approx(2.0, abs=0.5), "drops leave gaps: the video keeps real time"


def test_sigterm_stops_cleanly_and_finalises_the_recording(tmp_path):
    output = tmp_path / "fused.mp4"
    process = subprocess.Popen([sys.executable, "-m", "pipeline", "run", "--visible", f"synthetic:{SMALL}",
                                "--thermal", f"synthetic:{SMALL}", "--output", str(output)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    sidecar = output.with_name("fused.mp4.frames.jsonl")
    deadline = time.monotonic() + 60
    stages: set[int] = set()
    while time.monotonic() < deadline and len(read_sidecar(sidecar) if sidecar.exists() else []) < 20:
        stages.update(children_of(process.pid))
        time.sleep(0.2)
    stages.update(children_of(process.pid))
    assert len(stages) == 4, "four stage processes"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130
    assert "Traceback" not in stderr
    records = read_sidecar(sidecar)
    assert read_video(output).frames == len(records) >= 20
    assert stats_of(output)["frames_recorded"] == len(records)
    assert not [pid for pid in stages if alive(pid)], "no orphaned stage processes"


def test_a_launcher_killed_outright_leaves_no_orphans_and_a_playable_recording(tmp_path):
    output = tmp_path / "fused.mkv"
    process = subprocess.Popen([sys.executable, "-m", "pipeline", "run", "--visible", f"synthetic:{SMALL}",
                                "--thermal", f"synthetic:{SMALL}", "--output", str(output)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    sidecar = output.with_name("fused.mkv.frames.jsonl")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(read_sidecar(sidecar) if sidecar.exists() else []) < 20:
        time.sleep(0.2)
    stages = children_of(process.pid)
    assert len(stages) == 4
    process.kill()
    process.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(alive(pid) for pid in stages):
        time.sleep(0.1)
    assert not [pid for pid in stages if alive(pid)], "stages stop when their launcher dies"
    assert read_video(output).frames >= 20
    assert stats_of(output)["frames_recorded"] == len(read_sidecar(sidecar))


def test_a_crashed_stage_is_reported_the_rest_stop_and_the_recording_plays(tmp_path):
    output = tmp_path / "fused.mp4"
    process = start_run("--frames", "200", "--mode", "lossless", "--output", str(output),
                        "--engine", "engines_for_tests:FailingEngine")
    stages: set[int] = set()
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        stages.update(children_of(process.pid))
        time.sleep(0.05)
    assert process.poll() is not None, "the run stops by itself once its engine fails"
    stderr = process.stderr.read()
    assert process.returncode == 1
    assert "stage fuse exited with code 2" in stderr
    assert "simulated engine failure" in stderr and "Traceback" not in stderr
    # Call 1 is the fuse stage's warm-up before the first frame; calls 2-9 fused frames, call 10 failed.
    assert read_video(output).frames == 8, "the frames fused before the failure stay playable"
    assert not [pid for pid in stages if alive(pid)], "no orphaned stage processes"


def write_sequence(folder: Path, count: int, *, gray: bool, corrupt_at: int | None = None) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(count)
    for i in range(count):
        path = folder / f"frame{i:03d}.png"
        if i == corrupt_at:
            path.write_bytes(b"\x89PNG broken")
            continue
        image = rng.integers(0, 255, (64, 80) if gray else (96, 120, 3), dtype=np.uint8)
        cv2.imwrite(str(path), image)
    return folder


def test_corrupt_frame_mid_stream_is_skipped_counted_and_the_run_continues(tmp_path):
    visible = write_sequence(tmp_path / "visible", 12, gray=False, corrupt_at=5)
    thermal = write_sequence(tmp_path / "thermal", 12, gray=True)
    output = tmp_path / "fused.mp4"
    result = skyfuse("run", "--visible", str(visible), "--thermal", str(thermal), "--mode", "lossless",
                     "--output", str(output))
    assert result.returncode == 0, result.stderr
    assert "corrupt" in result.stderr and "Traceback" not in result.stderr
    stats = stats_of(output)
    assert stats["drops"]["capture.visible:corrupt_frame"] == 1
    records = read_sidecar(output.with_name("fused.mp4.frames.jsonl"))
    assert [r["seq"] for r in records] == [i for i in range(12) if i != 5]
    assert read_video(output).frames == 11


def test_stages_started_alone_drop_and_count_malformed_messages(tmp_path):
    """capture -> fuse -> sink with each stage its own command, as on separate machines."""
    import zmq

    from pipeline.frame import EndOfStream, Frame
    from pipeline.wire import BLOCK, Sender

    ends = {name: f"ipc://{tmp_path}/{name}" for name in ("visible", "thermal", "sink")}
    output = tmp_path / "fused.mkv"
    env = _env()
    sink = subprocess.Popen([sys.executable, "-m", "pipeline", "sink", "--input", ends["sink"], "--output",
                             str(output), "--stats", str(tmp_path / "stats.json"), "--mode", "lossless"],
                            env=env, stderr=subprocess.PIPE, text=True)
    fuse = subprocess.Popen([sys.executable, "-m", "pipeline", "fuse", "--visible-in", ends["visible"],
                             "--thermal-in", ends["thermal"], "--output", ends["sink"], "--mode", "lossless",
                             "--engine", "blend"], env=env, stderr=subprocess.PIPE, text=True)
    senders = {s: Sender(ends[s], policy=BLOCK) for s in ("visible", "thermal")}
    raw = zmq.Context.instance().socket(zmq.DEALER)
    raw.connect(ends["visible"])
    rng = np.random.default_rng(0)
    try:
        for i in range(10):
            t = i * 33_333_333
            senders["thermal"].send(Frame("thermal", i, t, rng.integers(0, 255, (64, 80), dtype=np.uint8),
                                          meta={"fps": 30.0}))
            if i == 4:
                raw.send_multipart([b'{"magic": "skyfuse", "version": 1, "kind": "frame"}', b"xx"])
                time.sleep(0.2)  # the raw socket is a separate pipe: let it arrive mid-stream
            senders["visible"].send(Frame("visible", i, t, rng.integers(0, 255, (96, 120, 3), dtype=np.uint8),
                                          meta={"fps": 30.0}))
        for stream, sender in senders.items():
            sender.send_eos(EndOfStream(stream))
        assert fuse.wait(30) == 0 and sink.wait(30) == 0
    finally:
        raw.close(0)
        for sender in senders.values():
            sender.close()
        for process in (fuse, sink):
            process.kill() if process.poll() is None else None
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["frames_recorded"] == 10
    assert stats["drops"]["fuse:malformed:bad_header"] == 1
    assert read_video(output).frames == 10


@pytest.mark.parametrize("args, message", [
    (["--visible", "/no/such/video.mp4"], "not found"),
    (["--visible", "{empty}"], "no image"),
    (["--visible", "camera:7"], "camera 7"),
    (["--visible", "{seq12}", "--thermal", "{seq10}"], "12 frames and the thermal one 10"),
    (["--engine", "nonsense"], "unknown engine 'nonsense'"),
    (["--calibration", "{bad_rig}"], "calibration file"),
    (["--config", "{bad_config}"], "unknown option(s) colour"),
    (["--output", "{tmp}/video.avi"], "use a .mp4 or .mkv"),
    (["--keys", "{tmp}/no-keys"], "link keys folder not found"),
    (["--live-view", "0", "--live-view-token", ""], "live view token is empty"),
    (["--live-view-host", "0.0.0.0"], "needs a live view: add --live-view PORT"),
])
def test_bad_input_gives_one_clear_line_and_a_non_zero_exit(tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    write_sequence(tmp_path / "seq12", 12, gray=False)
    write_sequence(tmp_path / "seq10", 10, gray=True)
    (tmp_path / "bad_rig.json").write_text('{"visible_to_thermal": [[1, 0], [0, 1]]}')
    (tmp_path / "bad_config.yaml").write_text("visible: synthetic\ncolour: true\n")
    paths = {name: str(tmp_path / name) for name in ("empty", "seq12", "seq10")}
    paths.update(bad_rig=str(tmp_path / "bad_rig.json"), bad_config=str(tmp_path / "bad_config.yaml"),
                 tmp=str(tmp_path))
    argv = ["run", "--output", str(tmp_path / "out.mp4"), *[a.format(**paths) for a in args]]
    result = skyfuse(*argv, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("skyfuse run: error:"), result.stderr
    assert message in lines[0]


@pytest.mark.parametrize("stage, args", [
    ("sink", ["--input", "tcp://*:0", "--output", "{tmp}/fused.mp4"]),
    ("fuse", ["--visible-in", "tcp://0.0.0.0:0", "--thermal-in", "ipc://{tmp}/t", "--output", "ipc://{tmp}/s"]),
    ("capture", ["--source", "synthetic", "--stream", "visible", "--output", "tcp://ground.example:5550"]),
])
def test_a_stage_on_a_network_address_refuses_plain_tcp_unless_told(tmp_path, stage, args):
    result = skyfuse(stage, *[a.format(tmp=tmp_path) for a in args], timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"skyfuse {stage}: error:"), result.stderr
    assert "--keys DIR" in lines[0] and "--insecure" in lines[0]
    assert not (tmp_path / "out.mp4").exists()


def test_a_run_over_tcp_with_link_keys_and_a_guarded_live_view_records_every_frame(tmp_path):
    keys = tmp_path / "keys"
    made = skyfuse("keys", str(keys))
    assert made.returncode == 0 and sorted(p.name for p in keys.iterdir()) == [
        "receiver.key", "receiver.key_secret", "sender.key", "sender.key_secret"]
    output = tmp_path / "fused.mp4"
    result = skyfuse("run", "--visible", f"synthetic:{SMALL}", "--thermal", f"synthetic:{SMALL}",
                     "--frames", "30", "--mode", "lossless", "--transport", "tcp", "--keys", str(keys),
                     "--engine", "blend", "--output", str(output), "--live-view", "0",
                     "--live-view-host", "0.0.0.0")
    assert result.returncode == 0, result.stderr
    assert read_video(output).frames == 30 and stats_of(output)["drops_total"] == 0
    logged_url = re.search(r"live view on http://0\.0\.0\.0:\d+/\?token=[\w-]{16,}", result.stderr)
    assert logged_url, "a live view off the loopback address asks for a token, and the log says it"
    # Every stage got the keys: one stage without them could not talk to the others at all.
    from pipeline.launcher import Launcher, RunConfig

    plan = Launcher(RunConfig(keys=str(keys), transport="tcp"), tmp_path).stages
    keyed = [stage.name for stage in plan if "--keys" in stage.argv]
    assert keyed == ["sink", "fuse", "capture.visible", "capture.thermal"]


def test_one_fuse_stage_serves_two_camera_pairs_in_batched_engine_calls(tmp_path):
    """Two drones into one ground station: per-pair order, timestamps and statistics survive batching."""
    from pipeline.frame import EndOfStream, Frame
    from pipeline.wire import BLOCK, Sender

    env = _env()
    links = ("north", "south")
    ends = {(link, port): f"ipc://{tmp_path}/{link}-{port}" for link in links
            for port in ("visible", "thermal", "sink")}
    sinks = [subprocess.Popen([sys.executable, "-m", "pipeline", "sink", "--input", ends[link, "sink"],
                               "--output", str(tmp_path / f"{link}.mkv"), "--stats",
                               str(tmp_path / f"{link}.json"), "--mode", "lossless"], env=env)
             for link in links]
    fuse_args = ["fuse", "--mode", "lossless", "--engine", "blend", "--batch", "2", "--max-wait", "0.5"]
    for link in links:
        fuse_args += ["--link", link, "--visible-in", ends[link, "visible"], "--thermal-in",
                      ends[link, "thermal"], "--output", ends[link, "sink"]]
    fuse = subprocess.Popen([sys.executable, "-m", "pipeline", *fuse_args], env=env)
    senders = {(link, stream): Sender(ends[link, stream], policy=BLOCK) for link in links
               for stream in ("visible", "thermal")}
    rng = np.random.default_rng(0)
    start = {"north": 1_000_000_000, "south": 5_000_000_000}  # different clocks per drone
    try:
        for i in range(20):
            for link in links:
                t = start[link] + i * 33_333_333
                senders[link, "thermal"].send(Frame("thermal", i, t, rng.integers(0, 255, (64, 80), np.uint8),
                                                    meta={"fps": 30.0}))
                senders[link, "visible"].send(Frame("visible", i, t,
                                                    rng.integers(0, 255, (96, 120, 3), np.uint8),
                                                    meta={"fps": 30.0}))
        for (_, stream), sender in senders.items():
            sender.send_eos(EndOfStream(stream), timeout_ms=100)
        assert fuse.wait(60) == 0 and all(sink.wait(60) == 0 for sink in sinks)
    finally:
        for sender in senders.values():
            sender.close()
        for process in (fuse, *sinks):
            process.kill() if process.poll() is None else None
    for link in links:
        records = read_sidecar(tmp_path / f"{link}.mkv.frames.jsonl")
        assert [r["seq"] for r in records] == list(range(20))
        assert [r["capture_ns"] for r in records] == [start[link] + i * 33_333_333 for i in range(20)]
        assert read_video(tmp_path / f"{link}.mkv").frames == 20
        stats = json.loads((tmp_path / f"{link}.json").read_text())
        fuse_stats = stats["stages"][f"fuse.{link}"]
        assert fuse_stats["frames"] == 20 and not fuse_stats["drops"]
        assert fuse_stats["batching"]["mean_batch"] > 1, "pairs of both drones shared engine calls"
