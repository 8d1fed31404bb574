"""`skyfuse calibrate` on the product's synthetic flight: a drone that speeds up and brakes makes a time
offset between the streams measurable, and the written rig matches the flight's truth."""

from __future__ import annotations

from calibration.cli import main as calibrate
from calibration.footage import corner_error
from core.rig import Rig
from pipeline.synthetic import FlightConfig, true_rig

FLIGHT = "seed=3,visible_size=640x360,thermal_size=320x256,speed_px_s=150,speed_variation=0.6"


def test_calibrate_finds_offset_and_rig_of_a_varying_speed_flight(tmp_path):
    output = tmp_path / "rig.json"
    code = calibrate(["--visible", f"synthetic:{FLIGHT}", "--thermal",
                      f"synthetic:{FLIGHT},time_offset_s=0.1", "--output", str(output), "--frames", "150"])
    assert code == 0
    rig = Rig.load(output)
    truth = true_rig(FlightConfig(visible_size=(640, 360), thermal_size=(320, 256)))
    assert abs(rig.time_offset_s - 0.1) <= 1 / 30
    assert corner_error(rig.visible_to_thermal, truth.visible_to_thermal, (320, 256)) <= 1.0
