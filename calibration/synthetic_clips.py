"""Synthetic flight clips with a known rig, for calibration tests and benchmarks.

The synthetic drone flies its loop at a constant speed with the camera's up along the flight direction,
so its image motion barely changes: to a static scene, a time offset then looks exactly like a shift of
the rig, and no method can tell them apart. These clips replay the flight at a varying speed (as a pilot
speeding up and braking) by rendering each frame at a re-timed scene instant; that makes the time
offset observable, and the truth stays exact: a thermal frame stamped t shows the scene that the
visible camera sees at stamp t + time_offset_s.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from pipeline.synthetic import FlightConfig, SyntheticFlight

from .clips import Clip, clip_from_render

RENDER_FPS = 600.0  # the flight is rendered at this rate; a re-timed instant is rounded to it


def scene_time(t: np.ndarray | float, wobble: float = 0.6) -> np.ndarray:
    """The flight instant shown at clip time t: the speed swings between 1 - wobble and 1 + wobble."""
    return t + wobble * (0.6 * np.sin(2.3 * t) / 2.3 + 0.4 * np.sin(5.1 * t + 1.0) / 5.1)


def synthetic_clips(
    config: FlightConfig,
    seconds: float,
    visible_fps: float = 30.0,
    thermal_fps: float = 30.0,
    time_offset_s: float = 0.0,
    start_s: float = 1.0,
) -> tuple[Clip, Clip, SyntheticFlight]:
    """(visible clip, thermal clip, flight) of `seconds` of re-timed flight; the thermal clip runs
    `time_offset_s` ahead (same convention as Rig.time_offset_s). The flight's own time_offset_s and
    frame rates are replaced."""
    flight = SyntheticFlight(
        replace(config, visible_fps=RENDER_FPS, thermal_fps=RENDER_FPS, time_offset_s=0.0)
    )

    def index(t: float) -> int:
        return int(round(float(scene_time(start_s + t)) * RENDER_FPS))

    visible_times = np.arange(math.floor(seconds * visible_fps)) / visible_fps
    thermal_times = np.arange(math.floor(seconds * thermal_fps)) / thermal_fps
    visible = clip_from_render(
        "visible", visible_times, lambda i: flight.visible_frame(index(visible_times[i]))
    )
    thermal = clip_from_render(
        "thermal", thermal_times, lambda i: flight.thermal_frame(index(thermal_times[i] + time_offset_s))
    )
    return visible, thermal, flight
