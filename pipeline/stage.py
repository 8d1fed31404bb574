"""What every stage process shares: stopping on signals, dying with its parent, logging, common flags."""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import select
import signal
import sys

from core.errors import SkyfuseError

MODES = ("live", "lossless")


class StopFlag:
    """Set once to ask a stage to stop; readable and waitable from any thread.

    Unlike threading.Event, `set` takes no lock, so a signal handler may call it at any moment: Python runs
    handlers in the main thread between bytecodes, possibly while that very thread holds an Event's lock
    (inside wait() or set()), and a handler that then takes the lock deadlocks the stage. Waiters sleep on
    a pipe that `set` writes to."""

    def __init__(self):
        self._set = False
        self._read_end, self._write_end = os.pipe()
        os.set_blocking(self._write_end, False)

    def set(self) -> None:
        if not self._set:
            self._set = True
            os.write(self._write_end, b"!")

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep until set or `timeout` seconds passed (a past deadline: not at all); True when set."""
        if not self._set:
            select.select([self._read_end], [], [], None if timeout is None else max(0.0, timeout))
        return self._set


def stop_on_signals() -> StopFlag:
    """A StopFlag set by SIGINT or SIGTERM, so a stage finishes its current frame and shuts down cleanly."""
    stop = StopFlag()

    def handler(signum, _frame):
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


STAGES_PER_MACHINE = 4  # two captures, the fuse stage and the sink share one machine under `skyfuse run`


def share_cores() -> int:
    """Give this stage process a fair share of the machine's cores for the thread pools of its libraries,
    before they start: OpenCV and PyTorch otherwise each start one worker per core in every stage, and
    four stages' pools (which also spin-wait between jobs) fight for the cores; a stage that waits for a
    descheduled worker misses its frame period. Threads sleep between jobs (OMP_WAIT_POLICY=PASSIVE) for
    the same reason; OMP_* settings the user made in the environment win. Returns the threads per pool."""
    import cv2

    threads = max(1, min(4, (os.cpu_count() or 1) // STAGES_PER_MACHINE))
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    cv2.setNumThreads(threads)
    return threads


def die_with_parent() -> None:
    """Ask Linux to send SIGTERM to this process when its parent dies, so a killed launcher leaves no
    orphans. Used as `preexec_fn`; a no-op where prctl is unavailable."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def log(stage: str, message: str) -> None:
    print(f"[{stage}] {message}", file=sys.stderr, flush=True)


class LauncherChannel:
    """The control channel of a stage that `skyfuse run` started with `--handshake`: JSON lines, the stage's
    reports on its original stdout and the launcher's answers on its stdin.

    Reports: `{"event": "status", "doing": ...}` while starting (named in a time-out message) and
    `{"event": "ready", ...}` once the stage can take frames at full rate. Anything else written to stdout
    in this process (libraries print) goes to stderr from then on, so it is never taken for a report."""

    def __init__(self):
        self._reports = os.fdopen(os.dup(1), "w", buffering=1)
        os.dup2(2, 1)

    def report(self, event: str, **fields) -> None:
        try:
            self._reports.write(json.dumps({"event": event, **fields}) + "\n")
        except BrokenPipeError:
            pass  # the launcher is gone; parent death stops this stage

    def status(self, doing: str) -> None:
        self.report("status", doing=doing)

    def receive(self) -> dict | None:
        """The launcher's next message; None once it closed the channel (the run is stopping)."""
        line = sys.stdin.readline()
        if not line:
            return None
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            raise SkyfuseError(f"unreadable message from the launcher: {line[:80]!r}") from None
        if not isinstance(message, dict):
            raise SkyfuseError(f"unreadable message from the launcher: {line[:80]!r}")
        return message


def add_handshake_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--handshake", action="store_true",
                        help="report readiness as JSON lines on stdout and take the launcher's answers on "
                             "stdin: how `skyfuse run` starts every stage before the first frame")


def add_mode_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", choices=MODES, default="live",
                        help="live: bounded queues, drop the oldest, flat latency; lossless: back-pressure, "
                             "drop nothing (default: live)")


def split_options(text: str, what: str) -> dict[str, str]:
    """KEY=VALUE,KEY=VALUE as strings; SkyfuseError naming `what` for an item without a value."""
    options = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SkyfuseError(f"{what}: expected KEY=VALUE, got {item!r}")
        options[key.strip()] = value.strip()
    return options


def parse_options(text: str, what: str) -> dict:
    """KEY=VALUE,KEY=VALUE with numbers, booleans and strings, for engine options."""
    return {key: _parse_value(value) for key, value in split_options(text, what).items()}


def _parse_value(text: str):
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
