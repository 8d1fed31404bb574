"""`skyfuse eval` and `skyfuse fuse-pair` on small synthetic pairs with a tiny skyfuse-rt."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from test_networks import TINY
from test_training import scene, write_pairs

from core.errors import SkyfuseError
from engines.networks import build_network, save_weights
from training.evaluate import main as eval_main
from training.fuse_pair import main as fuse_pair_main

torch.set_num_threads(1)


@pytest.fixture
def tiny_weights(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    save_weights(build_network("skyfuse-rt", TINY["skyfuse-rt"], pretrained=False), path)
    return path


def test_eval_prints_and_saves_the_protocol_table(tmp_path, tiny_weights, capsys):
    data = write_pairs(tmp_path / "data", 6)
    out = tmp_path / "eval.json"
    grid = tmp_path / "grid.png"
    args = [
        "--data",
        str(data),
        "--models",
        "skyfuse-rt",
        "--weights",
        f"skyfuse-rt={tiny_weights}",
        "--limit",
        "2",
        "--json",
        str(out),
        "--grid",
        str(grid),
        "--threads",
        "1",
    ]
    assert eval_main(args) == 0
    table = json.loads(out.read_text())
    rows = table["rows"]
    assert table["pairs"] == 2
    expected = ["", " oracle-reg", " aligned", " aligned, registration on"]
    assert {f"skyfuse-rt{suffix}" for suffix in expected} | {"blend (no registration)"} <= set(rows)
    assert rows["skyfuse-rt"]["reg_EPE"] >= 0 and "reg_EPE" not in rows["skyfuse-rt aligned"]
    # On the aligned pair any flow is error: its EPE is the flow the network reads there.
    assert rows["skyfuse-rt aligned, registration on"]["reg_EPE"] > 0
    assert rows["blend (no registration)"]["reg_EPE"] > 0  # no registration: the whole deformation is error
    assert cv2.imread(str(grid)) is not None
    assert "skyfuse-rt oracle-reg" in capsys.readouterr().out


def test_eval_rejects_unknown_models(tmp_path):
    with pytest.raises(SkyfuseError, match="unknown model"):
        eval_main(["--data", str(tmp_path), "--models", "nope"])


def test_fuse_pair_writes_images_at_the_visible_size(tmp_path, tiny_weights):
    visible, thermal = scene(72, 88, seed=3)
    cv2.imwrite(str(tmp_path / "v.png"), cv2.cvtColor((visible * 255).astype(np.uint8), cv2.COLOR_GRAY2BGR))
    small = cv2.resize((thermal * 255).astype(np.uint8), (44, 36))  # a thermal camera of lower resolution
    cv2.imwrite(str(tmp_path / "t.png"), small)
    args = ["--visible", str(tmp_path / "v.png"), "--thermal", str(tmp_path / "t.png"), "--threads", "1"]
    assert (
        fuse_pair_main(
            args
            + [
                "--output",
                str(tmp_path / "f.png"),
                "--weights",
                str(tiny_weights),
                "--save-registered",
                str(tmp_path / "r.png"),
                "--save-flow",
                str(tmp_path / "f.npy"),
            ]
        )
        == 0
    )
    assert cv2.imread(str(tmp_path / "f.png")).shape == (72, 88, 3)
    assert cv2.imread(str(tmp_path / "r.png"), cv2.IMREAD_GRAYSCALE).shape == (72, 88)
    flow = np.load(tmp_path / "f.npy")
    assert flow.shape == (72, 88, 2) and flow.dtype == np.float32
    assert fuse_pair_main(args + ["--output", str(tmp_path / "b.png"), "--engine", "blend"]) == 0
    assert cv2.imread(str(tmp_path / "b.png")).shape == (72, 88, 3)


def test_fuse_pair_without_registration_leaves_the_thermal_image_where_it_is(tmp_path):
    visible, _ = scene(96, 128, seed=4)
    visible_u8 = (visible * 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "v.png"), cv2.cvtColor(visible_u8, cv2.COLOR_GRAY2BGR))
    cv2.imwrite(str(tmp_path / "t.png"), np.roll(visible_u8, 4, axis=1))  # 4 px to the right
    args = ["--visible", str(tmp_path / "v.png"), "--thermal", str(tmp_path / "t.png"), "--threads", "1",
            "--output", str(tmp_path / "f.png"), "--save-flow", str(tmp_path / "flow.npy")]
    assert fuse_pair_main(args) == 0
    assert np.load(tmp_path / "flow.npy")[..., 0].mean() > 2.0  # the shipped network finds the shift
    assert fuse_pair_main(args + ["--no-registration"]) == 0
    assert not np.load(tmp_path / "flow.npy").any()
    with pytest.raises(SkyfuseError, match="does not register"):
        fuse_pair_main(args + ["--no-registration", "--model", "dae-fuse"])


def test_fuse_pair_reports_missing_inputs(tmp_path):
    with pytest.raises(SkyfuseError, match="visible image not found"):
        fuse_pair_main(
            [
                "--visible",
                str(tmp_path / "v.png"),
                "--thermal",
                str(tmp_path / "t.png"),
                "--output",
                str(tmp_path / "f.png"),
            ]
        )


def test_fuse_pair_with_a_rig_file_prewarps_the_thermal_view_into_the_visible_frame(tmp_path):
    visible, _ = scene(72, 88, seed=5)
    visible_u8 = (visible * 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "v.png"), cv2.cvtColor(visible_u8, cv2.COLOR_GRAY2BGR))
    # A thermal camera of another size, rotated, zoomed and shifted against the visible one.
    angle, zoom = np.deg2rad(4.0), 0.85
    to_thermal = np.array([[zoom * np.cos(angle), -zoom * np.sin(angle), 6.0],
                           [zoom * np.sin(angle), zoom * np.cos(angle), 2.0], [0.0, 0.0, 1.0]])
    cv2.imwrite(str(tmp_path / "t.png"), cv2.warpPerspective(visible_u8, to_thermal, (80, 60)))
    rig = {"visible_size": [88, 72], "thermal_size": [80, 60], "visible_to_thermal": to_thermal.tolist()}
    (tmp_path / "rig.json").write_text(json.dumps(rig))
    args = ["--visible", str(tmp_path / "v.png"), "--thermal", str(tmp_path / "t.png"), "--engine", "blend",
            "--output", str(tmp_path / "f.png")]

    def registered_error(extra: list[str]) -> float:
        assert fuse_pair_main(args + ["--save-registered", str(tmp_path / "r.png")] + extra) == 0
        registered = cv2.imread(str(tmp_path / "r.png"), cv2.IMREAD_GRAYSCALE).astype(np.float32)
        seen = (slice(12, 52), slice(12, 64))  # inside the thermal view
        return float(np.abs(registered[seen] - visible_u8[seen]).mean())

    assert registered_error(["--calibration", str(tmp_path / "rig.json")]) < 6.0
    assert registered_error([]) > 20.0  # a plain resize leaves the rotation, zoom and shift
    with pytest.raises(SkyfuseError, match="calibration file not found"):
        fuse_pair_main(args + ["--calibration", str(tmp_path / "missing.json")])
