"""Synthetic flight clips with a known rig, for calibration tests and benchmarks.

At a constant speed the drone's image motion barely changes: to a static scene, a time offset then looks
exactly like a shift of the rig, and no method can tell them apart. These clips fly with the flight's
`speed_variation` (a pilot speeding up and braking), which makes the time offset observable while the
truth stays exact: a thermal frame stamped t shows the scene that the visible camera sees at stamp
t + time_offset_s.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from pipeline.synthetic import FlightConfig, SyntheticFlight

from .clips import Clip, clip_from_render

DEFAULT_SPEED_VARIATION = 0.6  # used when the config flies at a constant speed


def synthetic_clips(
    config: FlightConfig,
    seconds: float,
    visible_fps: float = 30.0,
    thermal_fps: float = 30.0,
    time_offset_s: float = 0.0,
    start_s: float = 1.0,
) -> tuple[Clip, Clip, SyntheticFlight]:
    """(visible clip, thermal clip, flight) of `seconds` of flight at a varying speed; the thermal clip runs
    `time_offset_s` ahead (same convention as Rig.time_offset_s). The flight's own time_offset_s and
    frame rates are replaced, and a speed_variation of 0 becomes DEFAULT_SPEED_VARIATION. The clips begin
    at the flight's frame nearest `start_s`; their stamps start at 0."""
    flight = SyntheticFlight(replace(
        config, visible_fps=visible_fps, thermal_fps=thermal_fps, time_offset_s=time_offset_s,
        speed_variation=config.speed_variation or DEFAULT_SPEED_VARIATION,
    ))
    visible_count, thermal_count = math.floor(seconds * visible_fps), math.floor(seconds * thermal_fps)
    first_visible, first_thermal = round(start_s * visible_fps), round(start_s * thermal_fps)
    if not math.isclose(first_visible / visible_fps, first_thermal / thermal_fps):
        raise ValueError(f"start_s={start_s} must fall on a frame of both streams")  # else the offset shifts
    visible = clip_from_render("visible", np.arange(visible_count) / visible_fps,
                               lambda i: flight.visible_frame(first_visible + i))
    thermal = clip_from_render("thermal", np.arange(thermal_count) / thermal_fps,
                               lambda i: flight.thermal_frame(first_thermal + i))
    return visible, thermal, flight
