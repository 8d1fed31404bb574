"""Thermal AGC on the synthetic flight (640×512, 16-bit centikelvin): small warm targets, noise, flicker, ms.

For each scene and AGC mode, every frame of the flight goes through one ThermalAGC (so its damping acts
as in a run), and on every `--every`-th frame each person or vehicle the scene knows of
(SyntheticFlight.thermal_targets) that covers under 1 % of the frame and lies wholly inside it is
measured:
- `contrast`: the mean output gray level of its pixels minus that of a ring of surrounding ground (from 2
  to 8 px outside it, other targets left out); `clipped`: the share of its pixels at 255;
- `ring_std`: the standard deviation of the output over that ring (ground texture and sensor noise as
  displayed), and `cnr`, the contrast-to-noise ratio: mean contrast / mean ring_std. A mode that raises
  contrast only by amplifying everything raises ring_std as much, and its cnr does not grow;
- `halo`: the ring's mean level minus its level in the same frame rendered without people and vehicles
  (SyntheticFlight.thermal_frame(with_movers=False), through its own AGC of the same mode): how much the
  target itself darkens (< 0) or brightens the ground shown around it.
The contrast of an 8-bit output is at most 255 (target all white, ring all black), so no mapping can give
more than 255 / contrast(1-99) times the 1-99 mapping's contrast: `ceiling` per scene.
Scenes: `day` (the flight as it is: sunlit asphalt and dark roofs, a few % of the frame, as hot as people
or hotter), `night` (time_of_day=night: the ground at 1-16 °C), `night+sky` (the night scene with its top
third replaced by a clear sky at -40 °C, as an oblique view would see; targets under it are not counted).
On a static view (the drone hovering while people walk and cars drive) `flicker` is the mean absolute
change of the output's mean level between consecutive frames and `noise` the temporal noise of the
display, robust std of the frame-to-frame difference / sqrt(2) in gray levels. `ms` is the AGC's time per
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
OLD = "1-99 linear (old)"
DEFAULT = "default (dde)"
MODES = {
    OLD: AGCConfig(mode="linear", high_tail_pct=1.0),
    "linear 1 % / 0.2 %": AGCConfig(mode="linear"),
    "plateau": AGCConfig(mode="plateau"),
    DEFAULT: AGCConfig(),
    "dde detail_gain=1": AGCConfig(detail_gain=1.0),
    "plateau + roi": AGCConfig(mode="plateau", roi=ROI),
    "linear + roi": AGCConfig(mode="linear", roi=ROI),
    "dde + roi": AGCConfig(roi=ROI),
}
SCENES = ("day", "night", "night+sky")
RING = (2, 8)  # px outside a target: inner gap (its edge), outer edge of the ring
STATIC_FRAMES = 300


def flight(scene: str, static: bool = False) -> SyntheticFlight:
    config = FlightConfig(thermal_size=SIZE, thermal_bits=16, time_of_day=scene.split("+")[0])
    return SyntheticFlight(replace(config, speed_px_s=0.0) if static else config)


def thermal(flight_: SyntheticFlight, scene: str, index: int, with_movers: bool = True) -> np.ndarray:
    frame = flight_.thermal_frame(index, with_movers=with_movers)
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


def static_view(scene: str, config: AGCConfig, frames: int) -> tuple[float, float]:
    """(flicker, temporal noise) of the display of a hovering view, in gray levels."""
    static, agc = flight(scene, static=True), ThermalAGC(config)
    means, noise, previous = [], [], None
    for index in range(frames):
        out = agc(thermal(static, scene, index))
        means.append(float(out.mean()))
        if previous is not None and index % 10 == 0:  # robust: the few moving targets do not count
            difference = out.astype(np.int16) - previous
            mad = np.median(np.abs(difference - np.median(difference)))
            noise.append(1.4826 * float(mad) / np.sqrt(2))
        previous = out.astype(np.int16)
    return float(np.mean(np.abs(np.diff(means)))), float(np.mean(noise))


def summary(values: list[tuple[float, ...]]) -> dict:
    """Means of (contrast, clipped, ring_std, halo) samples, and cnr."""
    array = np.array(values).reshape(-1, 4)
    if not len(array):
        return {"n": 0}
    contrast, clipped, ring_std, halo = array.mean(axis=0)
    return {"n": len(array), "contrast": float(contrast), "clipped": float(clipped),
            "ring_std": float(ring_std), "cnr": float(contrast / ring_std) if ring_std > 0 else None,
            "halo": float(halo)}


def measure_scene(scene: str, frames: int, every: int) -> dict:
    fl = flight(scene)
    agcs = {name: ThermalAGC(config) for name, config in MODES.items()}
    bare = {name: ThermalAGC(config) for name, config in MODES.items()}  # the frames without movers
    samples = {name: {"people": [], "vehicles": []} for name in MODES}
    ms = {name: 0.0 for name in MODES}
    for index in range(frames):
        frame, ground = thermal(fl, scene, index), thermal(fl, scene, index, with_movers=False)
        outputs, grounds = {}, {}
        for name, agc in agcs.items():
            started = time.perf_counter()
            outputs[name] = agc(frame)
            ms[name] += (time.perf_counter() - started) * 1e3
            grounds[name] = bare[name](ground)
        if index % every:
            continue
        for vehicle, mask, ring in small_targets(fl.thermal_targets(index), scene):
            for name, out in outputs.items():
                ring_level = float(out[ring].mean())
                samples[name]["vehicles" if vehicle else "people"].append((
                    float(out[mask].mean()) - ring_level, float((out[mask] == 255).mean()),
                    float(out[ring].std()), ring_level - float(grounds[name][ring].mean())))
    result = {}
    for name, config in MODES.items():
        flicker, noise = static_view(scene, config, min(frames, STATIC_FRAMES))
        row = {"ms": ms[name] / frames, "flicker": flicker, "noise": noise}
        for kind, values in samples[name].items():
            row[kind] = summary(values)
        row["all"] = summary(samples[name]["people"] + samples[name]["vehicles"])
        result[name] = row
    old = result[OLD]["all"]
    for row in result.values():
        row["ratio_vs_old"] = row["all"]["contrast"] / old["contrast"]
        row["cnr_vs_old"] = row["all"]["cnr"] / old["cnr"]
    return result


def ceiling(result: dict) -> dict:
    """The largest contrast any 8-bit mapping gives (255) and what it is as a multiple of 1-99's."""
    old = result[OLD]
    return {kind: {"contrast": 255.0, "ratio_vs_old": 255.0 / old[kind]["contrast"]}
            for kind in ("people", "vehicles", "all") if old[kind]["n"] and old[kind]["contrast"] > 0}


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
    print(f"{'scene':10} {'mode':22} {'people':>14} {'vehicles':>14} {'all':>6} {'vs old':>7} {'clip':>5} "
          f"{'ring sd':>7} {'cnr':>5} {'vs old':>7} {'halo':>6} {'flicker':>7} {'noise':>5} {'ms':>5}")
    for scene in SCENES:
        result = measure_scene(scene, args.frames, args.every)
        report["scenes"][scene] = {"modes": result, "ceiling": ceiling(result)}
        for name, row in result.items():
            cells = [f"{row[k]['contrast']:6.1f} (n={row[k]['n']:3})" if row[k]["n"] else f"{'-':>14}"
                     for k in ("people", "vehicles")]
            everything = row["all"]
            print(f"{scene:10} {name:22} {cells[0]:>14} {cells[1]:>14} {everything['contrast']:6.1f} "
                  f"{row['ratio_vs_old']:6.2f}x {everything['clipped']:5.0%} {everything['ring_std']:7.1f} "
                  f"{everything['cnr']:5.1f} {row['cnr_vs_old']:6.2f}x {everything['halo']:6.1f} "
                  f"{row['flicker']:7.3f} {row['noise']:5.1f} {row['ms']:5.2f}")
        top, ratio = report["scenes"][scene]["ceiling"], result[DEFAULT]["ratio_vs_old"]
        print(f"{scene:10} {'8-bit ceiling':22} contrast 255 at most: "
              + ", ".join(f"{kind} {value['ratio_vs_old']:.2f}x 1-99" for kind, value in top.items())
              + f"; the default gives {ratio:.2f}x: 2x target "
              + ("met" if ratio >= 2 else "out of reach" if top["all"]["ratio_vs_old"] < 2 else "not met"))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
