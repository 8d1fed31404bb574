"""`skyfuse eval` on small synthetic pairs with a tiny skyfuse-rt."""

from __future__ import annotations

import json

import cv2
import pytest
import torch
from test_training import write_pairs

from core.errors import SkyfuseError
from training.evaluate import main as eval_main

torch.set_num_threads(1)


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
