"""What every stage process shares: stopping on signals, dying with its parent, logging, common flags."""

from __future__ import annotations

import argparse
import ctypes
import signal
import sys
import threading

from .errors import SkyfuseError

MODES = ("live", "lossless")


def stop_on_signals() -> threading.Event:
    """An event set by SIGINT or SIGTERM, so a stage finishes its current frame and shuts down cleanly."""
    stop = threading.Event()

    def handler(signum, _frame):
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


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
