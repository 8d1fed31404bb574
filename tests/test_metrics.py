"""Fusion and registration metrics: the shared reference fixture, degenerate inputs, the CLI."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from core.errors import SkyfuseError
from pipeline import cli
from training import metrics
from training.metrics import FUSION_METRICS, fusion_metrics, registration_metrics

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REFERENCE = DATA / "metrics_reference"
REFERENCE_METRICS = ["EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM", "CC", "PSNR", "MSE"]
TOLERANCE = 1e-3  # relative, as stated in metrics_reference/README.md


def textured(seed: int, shape=(96, 112)) -> np.ndarray:
    """A smooth random 8-bit image: structure at several scales, like a photograph."""
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.uniform(0, 255, shape), (0, 0), 2.0)
    noise = (noise - noise.min()) / np.ptp(noise) * 255
    return noise.round().astype(np.uint8)


@pytest.mark.data
@pytest.mark.skipif(not (REFERENCE / "reference.csv").is_file(), reason="shared/data is absent")
def test_reproduces_the_reference_csv():
    rows = list(csv.DictReader((REFERENCE / "reference.csv").open()))
    assert len(rows) == 36
    for row in rows:
        thermal = metrics.load_gray(REFERENCE / "inputs_gray" / "ir" / f"{row['name']}.png")
        visible = metrics.load_gray(REFERENCE / "inputs_gray" / "vis" / f"{row['name']}.png")
        fused = metrics.load_gray(DATA / row["fused_path"])
        values = fusion_metrics(visible, thermal, fused, REFERENCE_METRICS)
        for name in REFERENCE_METRICS:
            expected = float(row[name])
            if math.isnan(expected):
                # The evaluator's 0/0 when F = A; this project defines r = 0 there instead.
                assert (row["method"], name) == ("ir_only", "SCD")
                assert math.isfinite(values[name])
                continue
            assert values[name] == pytest.approx(expected, rel=TOLERANCE), (row["method"], row["name"], name)


def test_bgr_is_converted_like_the_reference():
    bgr = np.stack([textured(1), textured(2), textured(3)], axis=2)
    b, g, r = (bgr[:, :, i].astype(np.float64) for i in range(3))
    assert np.abs(metrics.to_gray(bgr) - (0.299 * r + 0.587 * g + 0.114 * b)).max() <= 0.5 + 1e-4
    assert np.array_equal(metrics.to_gray(bgr), np.round(metrics.to_gray(bgr)))
    gray = textured(4)
    assert np.array_equal(metrics.to_gray(np.dstack([gray] * 3)), gray.astype(np.float64))
    assert np.array_equal(fusion_metrics(np.dstack([gray] * 3), gray, gray), fusion_metrics(gray, gray, gray))


def test_constant_images_give_finite_defined_values():
    visible, thermal, fused = (np.full((64, 80), level, np.uint8) for level in (200, 50, 120))
    values = fusion_metrics(visible, thermal, fused)
    assert all(math.isfinite(value) for value in values.values()), values
    for name in ("EN", "SD", "SF", "AG", "MI", "SCD", "CC"):
        assert values[name] == 0.0, name
    assert 0 < values["Qabf"] < 1  # zero padding makes the frame border an edge of every source
    assert values["VIF"] == 2.0  # a source without variance counts as fully preserved (NaN -> 1 each)
    mse = ((50 - 120) ** 2 + (200 - 120) ** 2) / 2
    assert values["MSE"] == mse
    assert values["PSNR"] == pytest.approx(10 * math.log10(120 ** 2 / mse))
    # Constant windows reduce SSIM to its luminance term.
    c1 = (0.01 * 255) ** 2
    luminance = sum((2 * 120 * m + c1) / (120 ** 2 + m ** 2 + c1) for m in (50, 200))
    assert values["SSIM"] == pytest.approx(luminance)
    assert 0 < values["MS-SSIM"] < 2


def test_identical_inputs():
    image = textured(5)
    values = fusion_metrics(image, image, image)
    assert values["SSIM"] == pytest.approx(2.0)  # summed over the two sources
    assert values["MS-SSIM"] == pytest.approx(2.0)
    assert values["VIF"] == pytest.approx(2.0)
    assert values["CC"] == pytest.approx(1.0)
    assert values["MSE"] == 0.0
    assert values["PSNR"] == math.inf
    assert values["SCD"] == 0.0  # F - A and F - B are all zero: nothing added from the other source
    assert values["MI"] == pytest.approx(2 * values["EN"] * math.log(2))  # I(A; A) = H(A), in nats


def test_black_images():
    black = np.zeros((96, 112), np.uint8)
    assert fusion_metrics(textured(6), textured(7), black, ["PSNR"]) == {"PSNR": -math.inf}
    assert fusion_metrics(black, black, black, ["Qabf", "PSNR"]) == {"Qabf": 0.0, "PSNR": math.inf}


@pytest.mark.parametrize("fused_from", ["visible", "thermal", "mean"])
def test_metrics_are_symmetric_in_the_two_sources(fused_from):
    visible, thermal = textured(8), textured(9)
    fused = {"visible": visible, "thermal": thermal,
             "mean": np.round((visible.astype(float) + thermal) / 2).astype(np.uint8)}[fused_from]
    straight = fusion_metrics(visible, thermal, fused)
    swapped = fusion_metrics(thermal, visible, fused)
    for name in FUSION_METRICS:
        assert swapped[name] == pytest.approx(straight[name], rel=1e-12, abs=1e-12), name


@pytest.mark.parametrize("passed_through", ["visible", "thermal"])
def test_fusing_one_source_only_scores_the_other_pair(passed_through):
    images = {"visible": textured(10), "thermal": textured(11)}
    kept = images[passed_through].astype(np.float64)
    other = images["thermal" if passed_through == "visible" else "visible"].astype(np.float64)
    values = fusion_metrics(images["visible"], images["thermal"], images[passed_through])
    assert values["SSIM"] == pytest.approx(1 + metrics.structural.ssim(kept, other))
    assert values["CC"] == pytest.approx((1 + metrics.pearson(kept, other)) / 2)
    assert values["MSE"] == pytest.approx(np.mean((kept - other) ** 2) / 2)
    entropy_nats = values["EN"] * math.log(2)
    assert values["MI"] == pytest.approx(entropy_nats + metrics.mutual_information_pair(kept, other))
    assert values["SCD"] == pytest.approx(metrics.pearson(kept - other, kept))


def test_ms_ssim_uses_the_scales_that_fit():
    assert metrics.structural.ms_ssim_scales((176, 200)) == 5
    assert metrics.structural.ms_ssim_scales((160, 200)) == 4
    assert metrics.structural.ms_ssim_scales((10, 200)) == 0
    with pytest.raises(SkyfuseError, match="MS-SSIM needs"):
        fusion_metrics(*(np.zeros((10, 50), np.uint8),) * 3, ["MS-SSIM"])


def test_bad_fusion_inputs_are_rejected():
    image = textured(12)
    with pytest.raises(SkyfuseError, match="same size"):
        fusion_metrics(image, image, image[:-1])
    with pytest.raises(SkyfuseError, match="unknown metric"):
        fusion_metrics(image, image, image, ["EN", "NIQE"])
    with pytest.raises(SkyfuseError, match="0..255"):
        fusion_metrics(image, image, image.astype(np.float64) * 2)
    with pytest.raises(SkyfuseError, match="0..255"):
        fusion_metrics(np.dstack([image] * 3) - 1.0, image, image)
    for shape in [(0, 5), (8, 8, 4)]:
        with pytest.raises(SkyfuseError, match="expected a non-empty gray"):
            fusion_metrics(np.zeros(shape, np.uint8), image, image)
    with pytest.raises(SkyfuseError, match="VIF needs"):
        fusion_metrics(*(image[:30, :30],) * 3, ["VIF"])


def test_end_point_error_of_a_known_flow_over_the_mask():
    true_flow = np.zeros((40, 60, 2))
    flow = true_flow.copy()
    flow[:, :30] = (3.0, 4.0)  # 5 px wrong on the left half, exact on the right
    left = np.zeros((40, 60), bool)
    left[:, :30] = True
    image = textured(13, (40, 60))
    assert registration_metrics(image, image, flow=flow, true_flow=true_flow)["EPE"] == pytest.approx(2.5)
    assert registration_metrics(image, image, flow=flow, true_flow=true_flow, mask=left)["EPE"] == 5.0
    assert registration_metrics(image, image, flow=flow, true_flow=true_flow, mask=~left)["EPE"] == 0.0


def test_registration_metrics_ignore_pixels_outside_the_mask():
    reference = textured(14)
    registered = reference.copy()
    registered[:, :10] = 0  # the part of the frame that left the thermal view
    shown = np.ones(reference.shape, bool)
    shown[:, :10] = False
    values = registration_metrics(registered, reference, mask=shown)
    assert values["MSE"] == 0.0
    assert values["NCC"] == pytest.approx(1.0)
    assert values["MI"] == pytest.approx(metrics.entropy(reference[shown].astype(float)) * math.log(2))
    unmasked = registration_metrics(registered, reference)
    assert unmasked["MSE"] > 0 and unmasked["NCC"] < 1 and "EPE" not in unmasked
    shifted = registration_metrics(np.roll(reference, 3, axis=1), reference, mask=shown)
    assert shifted["NCC"] < values["NCC"] and shifted["MI"] < values["MI"]


def test_bad_registration_inputs_are_rejected():
    image = textured(15, (20, 30))
    flow = np.zeros((20, 30, 2))
    with pytest.raises(SkyfuseError, match="no pixels"):
        registration_metrics(image, image, mask=np.zeros((20, 30), bool))
    with pytest.raises(SkyfuseError, match="mask has shape"):
        registration_metrics(image, image, mask=np.ones((20, 31), bool))
    with pytest.raises(SkyfuseError, match="both flow and true_flow"):
        registration_metrics(image, image, flow=flow)
    with pytest.raises(SkyfuseError, match="flow has shape"):
        registration_metrics(image, image, flow=flow[:, :-1], true_flow=flow[:, :-1])
    with pytest.raises(SkyfuseError, match="same size"):
        registration_metrics(image, image[1:])


@pytest.fixture
def triple(tmp_path):
    paths = {}
    for seed, role in enumerate(("visible", "thermal", "fused")):
        paths[role] = tmp_path / f"{role}.png"
        cv2.imwrite(str(paths[role]), textured(20 + seed))
    return paths


def cli_args(paths) -> list[str]:
    return [arg for role, path in paths.items() for arg in (f"--{role}", str(path))]


def test_cli_prints_json_and_a_table(triple, capsys):
    assert metrics.main(cli_args(triple) + ["--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = fusion_metrics(*(cv2.imread(str(triple[role])) for role in ("visible", "thermal", "fused")))
    assert printed == pytest.approx(expected)
    assert metrics.main(cli_args(triple) + ["--metrics", "EN,Qabf"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["EN", "Qabf"]
    assert float(lines[1].split()[1]) == pytest.approx(expected["Qabf"], abs=1e-4)


def test_cli_reports_bad_input(triple, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), textured(30, (50, 60)))
    cases = {"not found": {"fused": tmp_path / "missing.png"}, "cannot read": {"thermal": broken},
             "same size": {"visible": small}}
    for message, override in cases.items():
        with pytest.raises(SkyfuseError, match=message):
            metrics.main(cli_args({**triple, **override}))
    assert cli.main(["metrics"] + cli_args({**triple, "visible": small})) == 2
    assert "skyfuse metrics: error: images must have the same size" in capsys.readouterr().err
