"""Thermal AGC on the synthetic flight (640×512, 16-bit centikelvin): small warm targets, flicker, cost.

For each scene and AGC mode, every frame of the flight goes through one ThermalAGC (so its damping acts
as in a run), and on every `--every`-th frame each person or vehicle the scene knows of
(SyntheticFlight.thermal_targets) that covers under 1 % of the frame and lies wholly inside it is
measured: its contrast is the mean output gray level of its pixels minus that of a ring of surrounding
ground (from 2 to 8 px outside it, other targets left out); `clipped` is the share of its pixels at 255.
Scenes: `day` (the flight as it is: sunlit asphalt and dark roofs, a few % of the frame, as hot as people
or hotter), `night` (time_of_day=night: the ground at 1-16 °C), `night+sky` (the night scene with its top
third replaced by a clear sky at -40 °C, as an oblique view would see; targets under it are not counted).
`flicker` is the mean absolute change of the output's mean level between consecutive frames of a static
view (the drone hovering while people walk and cars drive), for each scene. `ms` is the AGC's time per
frame; the sgemm rate is printed beside it (shared machines vary 5x day to day).

    python -m benchmarks.agc --json out/bench/agc.json [--frames 900] [--every 6]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import cv2
import numpy as np

from benchmarks.machine import machine_line
from pipeline.agc import AGCConfig, ThermalAGC
from pipeline.synthetic import KELVIN_OFFSET, FlightConfig, SyntheticFlight

SIZE = (640, 512)
SKY_C = -40.0  # apparent temperature of a clear night sky
ROI = (0.0, 1 / 3, 1.0, 1.0)  # the ground below the sky of the night+sky scene
MODES = {
    "1-99 linear (old)": AGCConfig(high_tail_pct=1.0),
    "default (linear, 1 % / 0.2 %)": AGCConfig(),
    "plateau": AGCConfig(mode="plateau"),
    "default + roi": AGCConfig(roi=ROI),
    "plateau + roi": AGCConfig(mode="plateau", roi=ROI),
}
SCENES = ("day", "night", "night+sky")
RING = (2, 8)  # px outside a target: inner gap (its edge), outer edge of the ring


def flight(scene: str, static: bool = False) -> SyntheticFlight:
    config = FlightConfig(thermal_size=SIZE, thermal_bits=16, time_of_day=scene.split("+")[0])
    return SyntheticFlight(replace(config, speed_px_s=0.0) if static else config)


def thermal(flight_: SyntheticFlight, scene: str, index: int) -> np.ndarray:
    frame = flight_.thermal_frame(index)
    if scene.endswith("+sky"):
        frame[: SIZE[1] // 3] = round((SKY_C + KELVIN_OFFSET) * 100)
    return frame


def small_targets(labels: np.ndarray, scene: str) -> list[tuple[bool, np.ndarray, np.ndarray]]:
    """(is a vehicle, target mask, ring mask) of every target under 1 % of the frame, ring inside it."""
    people = FlightConfig().people
    found = []
    top = SIZE[1] // 3 if scene.endswith("+sky") else 0
    occupied = cv2.dilate((labels > 0).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    for number in np.unique(labels[labels > 0]):
        mask = labels == number
        ys, xs = np.nonzero(mask)
        if (mask.sum() >= 0.01 * labels.size or ys.min() < top + RING[1] or xs.min() < RING[1]
                or ys.max() >= SIZE[1] - RING[1] or xs.max() >= SIZE[0] - RING[1]):
            continue
        grown = [cv2.dilate(mask.astype(np.uint8), cv2.getStructuringElement(
            cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))) > 0 for r in RING]
        ring = grown[1] & ~grown[0] & ~occupied
        if ring.any():
            found.append((number > people, mask, ring))
    return found


def measure_scene(scene: str, frames: int, every: int) -> dict:
    fl = flight(scene)
    agcs = {name: ThermalAGC(config) for name, config in MODES.items()}
    samples = {name: {"people": [], "vehicles": []} for name in MODES}
    ms = {name: 0.0 for name in MODES}
    for index in range(frames):
        frame = thermal(fl, scene, index)
        outputs = {}
        for name, agc in agcs.items():
            started = time.perf_counter()
            outputs[name] = agc(frame)
            ms[name] += (time.perf_counter() - started) * 1e3
        if index % every:
            continue
        for vehicle, mask, ring in small_targets(fl.thermal_targets(index), scene):
            for name, out in outputs.items():
                contrast = float(out[mask].mean()) - float(out[ring].mean())
                clipped = float((out[mask] == 255).mean())
                samples[name]["vehicles" if vehicle else "people"].append((contrast, clipped))
    static = flight(scene, static=True)
    flicker = {}
    for name, config in MODES.items():
        agc = ThermalAGC(config)
        means = [float(agc(thermal(static, scene, i)).mean()) for i in range(min(frames, 300))]
        flicker[name] = float(np.mean(np.abs(np.diff(means))))
    result = {}
    for name in MODES:
        row = {"ms": ms[name] / frames, "flicker": flicker[name]}
        for kind, values in samples[name].items():
            array = np.array(values).reshape(-1, 2)
            row[kind] = {"n": len(array), "contrast": float(array[:, 0].mean()) if len(array) else None,
                         "clipped": float(array[:, 1].mean()) if len(array) else None}
        everything = np.array(samples[name]["people"] + samples[name]["vehicles"]).reshape(-1, 2)
        row["all"] = {"n": len(everything), "contrast": float(everything[:, 0].mean()),
                      "clipped": float(everything[:, 1].mean())}
        result[name] = row
    old = result["1-99 linear (old)"]["all"]["contrast"]
    for row in result.values():
        row["ratio_vs_old"] = row["all"]["contrast"] / old
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--frames", type=int, default=900, help="frames of the flight per scene (30 fps)")
    parser.add_argument("--every", type=int, default=6, help="measure targets on every N-th frame")
    args = parser.parse_args(argv)
    machine = machine_line()
    print(machine)
    report = {"machine": machine, "size": SIZE, "frames": args.frames, "ring_px": RING,
              "modes": {name: asdict(config) for name, config in MODES.items()}, "scenes": {}}
    print(f"{'scene':10} {'mode':30} {'people':>14} {'vehicles':>14} {'all':>7} {'vs old':>7} "
          f"{'clip':>5} {'flicker':>8} {'ms':>5}")
    for scene in SCENES:
        result = report["scenes"][scene] = measure_scene(scene, args.frames, args.every)
        for name, row in result.items():
            cells = [f"{row[k]['contrast']:6.1f} (n={row[k]['n']:3})" if row[k]["n"] else f"{'-':>14}"
                     for k in ("people", "vehicles")]
            print(f"{scene:10} {name:30} {cells[0]:>14} {cells[1]:>14} {row['all']['contrast']:7.1f} "
                  f"{row['ratio_vs_old']:6.2f}x {row['all']['clipped']:5.0%} {row['flicker']:8.2f} "
                  f"{row['ms']:5.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
