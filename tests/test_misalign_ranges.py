"""The named misalignment ranges, their fixed test deformations and the evaluation protocols built on
them (issue 21); small synthetic images, the RoadScene checks skip without the data."""

from __future__ import annotations

import csv
import hashlib
import json

import numpy as np
import pytest
import torch
from test_training import ROADSCENE, scene, write_pairs

from core.errors import SkyfuseError
from pipeline.cli import main as cli_main
from training import synth
from training.data import Pair, find_pairs, load_pair, pair_seed, split
from training.dataset import FixedMisaligned, MisalignedCrops
from training.evaluate import main as eval_main
from training.trainer import main as train_main

torch.set_num_threads(1)

# Sizes spanning RoadScene's test images (the affine part of a deformation grows with the image).
SIZES = [(178, 368), (256, 352), (300, 400), (352, 464), (400, 512), (459, 563)]
# Documented bands of each range's displacement |f| px (training.synth's docstring has the values
# measured on the 100 RoadScene test deformations; 40 draws here scatter about them by a pixel or so).
BANDS = {
    "rig": {"mean": (0.8, 1.5), "p95": (1.5, 3.0), "max": (0.0, 4.0)},
    "default": {"mean": (6.0, 9.5), "p95": (12.0, 17.0), "max": (15.0, 30.0)},
    "large": {"mean": (13.5, 20.0), "p95": (26.0, 33.0), "p99": (30.0, 38.0), "max": (30.0, 50.0)},
}


@pytest.mark.parametrize("name", list(BANDS))
def test_each_range_displaces_pixels_within_its_documented_band(name):
    config = synth.misalign_range(name)
    flows = [synth.random_flow(*SIZES[i % len(SIZES)], np.random.default_rng(pair_seed(f"p{i}")), config)
             for i in range(40)]
    stats = synth.displacement_stats(flows)
    for key, (low, high) in BANDS[name].items():
        assert low <= stats[key] <= high, (key, stats)


def test_a_calibrated_rig_residual_stays_under_four_pixels_at_full_thermal_size():
    config = synth.misalign_range("rig")
    for seed in range(40):
        flow = synth.random_flow(512, 640, np.random.default_rng(seed), config)
        assert np.linalg.norm(flow, axis=2).max() <= 4.0


def test_a_large_deformation_is_still_inverted_exactly_enough():
    _, thermal = scene(200, 260, seed=2)
    m = synth.misalign(thermal, np.random.default_rng(4), synth.misalign_range("large"))
    assert np.linalg.norm(m.flow, axis=2).mean() > 8.0
    interior = np.zeros_like(m.valid)
    interior[30:-30, 30:-30] = True
    round_trip = m.flow + synth.warp(synth.invert_flow(m.flow), m.flow)
    assert np.abs(round_trip)[interior].max() < 0.5


def test_unknown_range_is_a_one_line_error():
    with pytest.raises(SkyfuseError, match="range 'huge'; choose from rig, default, large"):
        synth.misalign_range("huge")


# ---- fixed test deformations --------------------------------------------------------------------------
def rounded_digest(tensor: torch.Tensor) -> str:
    """Digest of values rounded to 1e-3 px: any change of the random draws shows, float noise does not."""
    return hashlib.sha256(np.round(tensor.numpy().astype(np.float64), 3).tobytes()).hexdigest()[:16]


def test_the_default_protocol_deformations_are_unchanged():
    """Recorded before the named ranges were added: the shipped weights' numbers depend on them."""
    pair = Pair("FLIR_00233", *scene(96, 128, seed=0))
    for sample in (FixedMisaligned([pair])[0], FixedMisaligned.of_range([pair], "default")[0]):
        assert rounded_digest(sample["flow"]) == "9791ece1c267f5ee"
        assert rounded_digest(sample["thermal"]) == "a286dac3024b2beb"


@pytest.mark.skipif(not ROADSCENE.is_dir(), reason="no RoadScene data at ../shared/data/roadscene")
def test_the_default_protocol_deformation_of_a_roadscene_pair_is_unchanged():
    test = split(find_pairs(ROADSCENE))[1]
    assert test[0].name == "FLIR_00233"
    sample = FixedMisaligned.of_range([load_pair(test[0])], "default")[0]
    digest = hashlib.sha256(sample["flow"].numpy().tobytes()).hexdigest()
    assert digest == "635f7de021f233b780e9e3928f3534f59fca5acd72002519d38501bb7c5836ef"


def test_other_ranges_draw_independent_fixed_deformations():
    pairs = [Pair(f"n{i}", *scene(64, 80, seed=i)) for i in range(2)]
    default, large = (FixedMisaligned.of_range(pairs, name)[0] for name in ("default", "large"))
    again = FixedMisaligned.of_range(list(reversed(pairs)), "large")[1]
    torch.testing.assert_close(large["flow"], again["flow"])
    # Not the default deformation scaled up: the two flows point in unrelated directions.
    a, b = default["flow"].flatten().double(), large["flow"].flatten().double()
    assert abs(float(torch.dot(a, b) / (a.norm() * b.norm()))) < 0.9
    assert large["flow"].norm(dim=0).mean() > 1.5 * default["flow"].norm(dim=0).mean()


def test_training_crops_can_mix_ranges():
    pairs = [Pair("a", *scene(64, 80, seed=0))]
    configs = [synth.misalign_range("rig"), synth.misalign_range("large")]
    crops = MisalignedCrops(pairs, crop=48, config=configs, seed=3, repeats=12)
    means = [float(crops[i]["flow"].norm(dim=0).mean()) for i in range(12)]
    assert min(means) < 2.0 and max(means) > 4.0  # some crops from each range


# ---- `skyfuse eval --protocol` and `skyfuse train --range` ------------------------------------------
def eval_args(data, weights, out, protocol):
    return ["--data", str(data), "--models", "skyfuse-rt", "--weights", f"skyfuse-rt={weights}",
            "--limit", "2", "--json", str(out), "--grid", str(out.with_suffix(".png")), "--threads", "1",
            "--baselines", "blend", "--protocol", protocol]


def test_eval_scores_the_large_protocol_on_its_own_deformations(tmp_path, tiny_weights, capsys):
    data = write_pairs(tmp_path / "data", 4, size=(96, 128))
    tables = {}
    for protocol in ("roadscene-misaligned", "roadscene-misaligned-large"):
        out = tmp_path / f"{protocol}.json"
        assert eval_main(eval_args(data, tiny_weights, out, protocol)) == 0
        tables[protocol] = json.loads(out.read_text())
        assert tables[protocol]["protocol"] == protocol and tables[protocol]["pairs"] == 2
    assert "roadscene-misaligned-large: 2 pairs" in capsys.readouterr().out
    no_registration = {p: t["rows"]["blend (no registration)"]["reg_EPE"] for p, t in tables.items()}
    assert no_registration["roadscene-misaligned-large"] > 1.5 * no_registration["roadscene-misaligned"]


def test_eval_rejects_an_unknown_protocol_in_one_line(tmp_path, capsys):
    with pytest.raises(SkyfuseError, match="protocol 'roadscene-huge'; choose from roadscene-misaligned"):
        eval_main(["--data", str(tmp_path), "--protocol", "roadscene-huge"])
    assert cli_main(["eval", "--data", str(tmp_path), "--protocol", "roadscene-huge"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown protocol 'roadscene-huge'" in err


def test_train_command_takes_ranges_and_validates_each(tmp_path, capsys):
    data = write_pairs(tmp_path / "data", 6)
    out = tmp_path / "run"
    args = ["--model", "skyfuse-rt", "--data", str(data), "--epochs", "1", "--batch", "2", "--crop", "32",
            "--val-pairs", "1", "--out", str(out), "--threads", "1", "--config", "width=8", "decoder_width=8",
            "match_channels=4", "--range", "default", "large"]
    assert train_main(args) == 0
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert float(rows[-1]["val_large_reg_EPE"]) > 0 and float(rows[-1]["val_default_reg_EPE"]) > 0
    assert "misalignment: default, large" in capsys.readouterr().out
    assert "large_reg_EPE" in (out / "baseline.txt").read_text()
    with pytest.raises(SkyfuseError, match="unknown misalignment range 'huge'"):
        train_main(args[:-2] + ["huge"])


# ---- benchmarks.registration_floor --protocol ----------------------------------------------------------
def test_registration_floor_scores_the_network_against_the_ngf_optimum(tmp_path, capsys):
    from benchmarks.registration_floor import main as floor_main

    data = write_pairs(tmp_path / "data", 4, size=(96, 128))
    out = tmp_path / "floor.json"
    args = ["--data", str(data), "--pairs", "1", "--steps", "1", "--threads", "1", "--json", str(out),
            "--protocol", "roadscene-misaligned-large"]
    assert floor_main(args) == 0
    result = json.loads(out.read_text())
    assert result["meta"]["protocol"] == "roadscene-misaligned-large"
    assert result["meta"]["start_scales"] == [8, 4, 2, 1]  # the large range starts one level coarser
    targets = result["meta"]["targets"]
    assert {"NCC, covered pixels", "EPE px", "fusion Qabf", "NCC, covered pixels (absolute)"} <= set(targets)
    means = result["means"]
    assert 0 < means["cross_from_truth_NCC"] <= 1 and 0 < means["network_NCC"] <= 1
    assert means["epe_quarter_cross_from_truth"] >= 0  # the optimum at the network's finest resolution
    printed = capsys.readouterr().out
    assert "issue 21's targets" in printed and "1/4 res only" in printed
    assert floor_main(["--data", str(tmp_path / "none")]) == 0
    assert "skipped" in capsys.readouterr().out
    assert floor_main(["--data", str(data), "--protocol", "nope"]) == 2
    assert "unknown protocol 'nope'" in capsys.readouterr().err
