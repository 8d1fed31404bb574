"""Image sizes as users write them: "640x512" is WIDTHxHEIGHT, as video sizes are, and parses to (W, H),
the order OpenCV takes sizes in. Callers that index arrays swap it themselves."""

from __future__ import annotations

from .errors import SkyfuseError

MIN_SIDE = 16  # the smallest image side the frame protocol and the networks accept


def parse_size(text: str) -> tuple[int, int]:
    """"WIDTHxHEIGHT" -> (width, height); SkyfuseError for anything else or a side under MIN_SIDE."""
    width, sep, height = text.strip().lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise SkyfuseError(f"size must be WIDTHxHEIGHT (e.g. 640x512), got {text!r}")
    if int(width) < MIN_SIDE or int(height) < MIN_SIDE:
        raise SkyfuseError(f"size must be at least {MIN_SIDE}x{MIN_SIDE}, got {text!r}")
    return int(width), int(height)
