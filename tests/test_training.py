"""Training data, misalignment synthesis and the `skyfuse train` command, on small synthetic images."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from test_networks import TINY

from core.errors import SkyfuseError
from engines.networks import build_network
from training import synth
from training.data import Pair, find_pairs, load_pair, split
from training.dataset import FixedMisaligned, MisalignedCrops
from training.recipes import recipe_class
from training.trainer import main as train_main

# Tiny networks run fastest single-threaded; the CI machine's 2 cores are shared with other tests.
torch.set_num_threads(1)

ROADSCENE = Path(__file__).resolve().parents[2] / "shared" / "data" / "roadscene"


def scene(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A textured visible image and a thermal one sharing its edges plus a warm blob, float32 in [0, 1]."""
    rng = np.random.default_rng(seed)
    texture = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 2.0)
    texture = (texture - texture.min()) / (np.ptp(texture) + 1e-6)
    visible = texture.copy()
    cv2.rectangle(visible, (w // 4, h // 4), (w // 2, h // 2), 0.9, -1)
    thermal = 0.6 - 0.4 * texture
    cv2.circle(thermal, (2 * w // 3, h // 2), max(2, h // 8), 1.0, -1)
    cv2.rectangle(thermal, (w // 4, h // 4), (w // 2, h // 2), 0.2, -1)
    return visible, thermal.astype(np.float32)


def write_pairs(root: Path, n: int, size=(72, 88)) -> Path:
    (root / "visible").mkdir(parents=True)
    (root / "thermal").mkdir()
    for i in range(n):
        visible, thermal = scene(*size, seed=i)
        bgr = cv2.cvtColor((visible * 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
        cv2.imwrite(str(root / "visible" / f"p{i:02d}.png"), bgr)
        cv2.imwrite(str(root / "thermal" / f"p{i:02d}.png"), (thermal * 255).astype(np.uint8))
    return root


# ---- misalignment synthesis ------------------------------------------------------------------------
def test_the_ground_truth_flow_maps_the_misaligned_image_back():
    _, thermal = scene(120, 160, seed=1)
    thermal = cv2.GaussianBlur(thermal, (0, 0), 1.5)  # smooth enough for bilinear resampling to be exact-ish
    m = synth.misalign(thermal, np.random.default_rng(3), synth.MisalignConfig(elastic_spacing=32))
    assert np.abs(m.flow).max() > 2.0  # a real deformation
    interior = np.zeros_like(m.valid)
    interior[12:-12, 12:-12] = True
    inverse = synth.invert_flow(m.flow)
    round_trip = m.flow + synth.warp(inverse, m.flow)  # f(p) + g(p + f(p)) = 0
    assert np.abs(round_trip)[interior].max() < 0.5
    registered = synth.warp(m.thermal, m.flow)
    assert np.abs(registered - thermal)[interior & m.valid].mean() < 0.01
    assert (
        np.abs(m.thermal - thermal)[interior].mean()
        > 3 * np.abs(registered - thermal)[interior & m.valid].mean()
    )


def test_pixels_that_leave_the_thermal_view_are_marked_and_empty():
    image = np.ones((40, 50), np.float32)
    config = synth.MisalignConfig(translate=0, rotate_deg=0, scale=0, shear=0, elastic_px=0)
    flow = synth.random_flow(40, 50, np.random.default_rng(0), config)
    assert not flow.any()
    flow[..., 0] = 6.0  # visible pixel p sees thermal p + 6 px in x
    valid = synth.inside(flow)
    assert valid[:, :44].all() and not valid[:, 44:].any()
    distorted = synth.warp(image, synth.invert_flow(flow))  # thermal(q) = aligned(q - 6)
    assert distorted[:, 7:].min() > 0.99 and distorted[:, :5].max() == 0.0


def test_parallax_adds_a_depth_dependent_shift():
    base = synth.MisalignConfig(translate=0, rotate_deg=0, scale=0, shear=0, elastic_px=0, parallax_px=4.0)
    flow = synth.random_flow(64, 64, np.random.default_rng(5), base)
    magnitude = np.linalg.norm(flow, axis=2)
    assert 0 < magnitude.max() <= 4.0 + 1e-4 and magnitude.std() > 0.1


def test_fixed_test_deformation_depends_only_on_the_pair_name():
    pairs = [Pair(f"n{i}", *scene(48, 64, seed=i)) for i in range(3)]
    first = FixedMisaligned(pairs)[1]
    again = FixedMisaligned(list(reversed(pairs)))[1]
    torch.testing.assert_close(first["flow"], again["flow"])
    assert not torch.equal(first["flow"], FixedMisaligned(pairs)[0]["flow"])


def test_training_crops_are_seeded_and_sized():
    pairs = [Pair("a", *scene(40, 60, seed=0))]  # smaller than the crop: enlarged to hold it
    crops = MisalignedCrops(pairs, crop=48, seed=7)
    a, b = crops[0], crops[0]
    assert a["visible"].shape == (1, 48, 48) and a["flow"].shape == (2, 48, 48)
    torch.testing.assert_close(a["flow"], b["flow"])
    crops.set_epoch(1)
    assert not torch.equal(crops[0]["flow"], a["flow"])


# ---- readers and split ------------------------------------------------------------------------------
def test_folder_reader_pairs_matching_names(tmp_path):
    root = write_pairs(tmp_path / "d", 3)
    (root / "thermal" / "extra.png").write_bytes((root / "thermal" / "p00.png").read_bytes())
    pairs = find_pairs(root)
    assert [p.name for p in pairs] == ["p00", "p01", "p02"]
    pair = load_pair(pairs[0])
    assert pair.visible.shape == pair.thermal.shape == (72, 88)
    assert pair.visible.dtype == np.float32 and 0 <= pair.visible.min() and pair.visible.max() <= 1


def test_readers_report_bad_layouts(tmp_path):
    with pytest.raises(SkyfuseError, match="does not exist"):
        find_pairs(tmp_path / "nowhere")
    (tmp_path / "visible").mkdir()
    with pytest.raises(SkyfuseError, match="thermal folder"):
        find_pairs(tmp_path)
    (tmp_path / "thermal").mkdir()
    with pytest.raises(SkyfuseError, match="no image names in common"):
        find_pairs(tmp_path)


def test_wisard_layout_crops_the_wider_visible_view(tmp_path):
    (tmp_path / "s" / "thermal").mkdir(parents=True)
    (tmp_path / "s" / "visible").mkdir()
    visible = np.zeros((90, 160, 3), np.uint8)
    visible[:, 80 - 28 : 80 + 28] = 200  # the centre 56/160 ≈ 45/64 of the width is bright
    cv2.imwrite(str(tmp_path / "s" / "visible" / "v0.png"), visible)
    cv2.imwrite(str(tmp_path / "s" / "thermal" / "t0.png"), np.zeros((40, 64), np.uint8))
    (tmp_path / "pairs.csv").write_text(
        "sequence,thermal,visible\ns,s/thermal/t0.png,s/visible/v0.png\ns,s/thermal/t1.png,\n"
    )
    pairs = find_pairs(tmp_path)
    assert len(pairs) == 1
    pair = load_pair(pairs[0])
    assert pair.visible.shape == (40, 64)
    assert pair.visible[:, 16:48].mean() > 0.6  # the bright centre fills most of the cropped view


def test_split_is_fixed_and_disjoint(tmp_path):
    pairs = find_pairs(write_pairs(tmp_path / "d", 9))
    train, test = split(pairs, n_test=100)
    assert len(test) == 4 and len(train) == 5  # fewer than 200 pairs: half for testing
    assert not {p.name for p in train} & {p.name for p in test}
    assert split(list(reversed(pairs)), n_test=100) == (train, test)


@pytest.mark.data
@pytest.mark.skipif(not ROADSCENE.is_dir(), reason="needs ../shared/data/roadscene")
def test_roadscene_split_is_121_train_100_test():
    train, test = split(find_pairs(ROADSCENE))
    assert (len(train), len(test)) == (121, 100)


# ---- training -----------------------------------------------------------------------------------------
CROPS = {"skyfuse-rt": 32, "umf-cmgr": 32, "misfit-v": 256, "dae-fuse": 32}
# Per model, a loss term that must fall when one small batch is fitted for 20 steps (adversarial terms
# are excluded: they need not fall).
WATCHED = {"skyfuse-rt": "loss", "umf-cmgr": "fus", "misfit-v": "l1", "dae-fuse": "content"}


@pytest.mark.parametrize("name", list(CROPS))
def test_twenty_steps_reduce_the_loss(name):
    torch.manual_seed(0)
    pairs = [Pair(str(i), *scene(48, 64, seed=i)) for i in range(2)]
    batch_set = MisalignedCrops(pairs, CROPS[name] if name != "misfit-v" else 32, seed=0)
    batch = {k: torch.stack([batch_set[i][k] for i in range(2)]) for k in batch_set[0]}
    if name == "misfit-v":  # 256 is its minimum size: enlarge the tiny batch
        batch = {k: torch.nn.functional.interpolate(v, size=(256, 256)) for k, v in batch.items()}
    network = build_network(name, TINY[name], pretrained=False).train()
    recipe = recipe_class(name)(network, lr=2e-3)
    recipe.plan(1000)  # DAE-Fuse: stay in phase 1
    values = [recipe.train_step(batch)[WATCHED[name]] for _ in range(20)]
    assert np.mean(values[-4:]) < 0.9 * np.mean(values[:4])


def test_train_command_writes_logs_checkpoints_and_resumes(tmp_path, capsys):
    data = write_pairs(tmp_path / "data", 6)
    out = tmp_path / "run"
    args = [
        "--model",
        "skyfuse-rt",
        "--data",
        str(data),
        "--epochs",
        "2",
        "--batch",
        "2",
        "--crop",
        "32",
        "--val-pairs",
        "1",
        "--out",
        str(out),
        "--threads",
        "1",
        "--config",
        "width=8",
        "decoder_width=8",
        "match_channels=4",
    ]
    assert train_main(args) == 0
    for name in ("checkpoint.pt", "skyfuse-rt.pt", "log.csv", "curves.png", "command.txt", "baseline.txt"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    assert float(rows[-1]["val_reg_EPE"]) >= 0 and rows[-1]["train_loss"]
    assert cv2.imread(str(out / "curves.png")) is not None
    assert "validation after epoch 2" in capsys.readouterr().out
    network = build_network("skyfuse-rt", weights=out / "skyfuse-rt.pt")
    assert network.config.width == 8

    resume = ["--resume", str(out / "checkpoint.pt"), "--lr", "0.0002"]
    assert train_main(args[:5] + ["3"] + args[6:] + resume) == 0
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert [r["epoch"] for r in rows] == ["0", "1", "2", "3"]
    assert int(rows[-1]["step"]) > int(rows[-2]["step"])
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert state["recipe"]["optimizers"]["network"]["param_groups"][0]["lr"] == 0.0002
    assert len((out / "command.txt").read_text().splitlines()) == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--crop", "40"], "multiple of 16"),
        (["--lr", "0"], "--lr must be positive"),
        (["--config", "width"], "KEY=VALUE"),
        (["--config", "depth=3"], "unknown config field"),
        (["--init", "w.pt", "--resume", "c.pt"], "give only one"),
        (["--train-only", "decoder"], "--train-only decoder: no parameter starts with it"),
    ],
)
def test_train_command_rejects_bad_options(tmp_path, extra, message):
    data = write_pairs(tmp_path / "data", 4)
    args = [
        "--model",
        "skyfuse-rt",
        "--data",
        str(data),
        "--out",
        str(tmp_path / "o"),
        "--crop",
        "32",
    ] + extra
    with pytest.raises(SkyfuseError, match=message):
        train_main(args)


def test_train_command_reports_a_missing_data_folder(tmp_path):
    with pytest.raises(SkyfuseError, match="does not exist"):
        train_main(
            [
                "--model",
                "skyfuse-rt",
                "--data",
                str(tmp_path / "none"),
                "--out",
                str(tmp_path / "o"),
                "--crop",
                "32",
            ]
        )


def test_train_only_changes_the_named_parameters_and_holds_the_rest(tmp_path, capsys):
    data = write_pairs(tmp_path / "data", 4)
    args = ["--model", "skyfuse-rt", "--data", str(data), "--batch", "2", "--crop", "32", "--val-pairs", "0",
            "--threads", "1", "--max-steps", "3",
            "--config", "width=8", "decoder_width=8", "match_channels=4"]
    assert train_main(args + ["--out", str(tmp_path / "start")]) == 0
    start = tmp_path / "start" / "skyfuse-rt.pt"
    fine_tune = ["--out", str(tmp_path / "run"), "--init", str(start), "--train-only", "fine"]
    assert train_main(args + fine_tune) == 0
    assert "--train-only fine: training" in capsys.readouterr().out
    before = torch.load(start, weights_only=False)["state_dict"]
    after = torch.load(tmp_path / "run" / "skyfuse-rt.pt", weights_only=False)["state_dict"]
    changed = {name for name, tensor in after.items() if not torch.equal(tensor, before[name])}
    assert changed and all(name.startswith("fine.") for name in changed)
    assert any(name.startswith("encoder.") for name in after)


def test_init_starts_a_grown_network_where_the_old_one_was(tmp_path):
    from torch import nn

    from training.trainer import initialise_from

    class Old(nn.Module):
        def __init__(self, inputs: int = 3):
            super().__init__()
            self.conv, self.head = nn.Conv2d(inputs, 4, 3), nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.head(self.conv(x))

    class New(Old):  # two more input channels and a new layer
        def __init__(self):
            super().__init__(inputs=5)
            self.extra = nn.Conv2d(2, 2, 1)

    old, new = Old(), New()
    torch.save({"state_dict": old.state_dict()}, tmp_path / "old.pt")
    summary = initialise_from(new, str(tmp_path / "old.pt"))
    assert "3 tensors copied" in summary and "1 grown (conv.weight)" in summary
    assert "2 new (extra.weight, extra.bias)" in summary
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():  # the new input channels start out ignored
        torch.testing.assert_close(new(torch.cat((x, torch.rand(1, 2, 8, 8)), 1)), old(x))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(SkyfuseError, match="--init: cannot read weights"):
        initialise_from(new, str(tmp_path / "junk.pt"))
