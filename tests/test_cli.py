"""The `skyfuse` command: dispatch, usage and one-line errors."""

import cv2
import numpy as np
import pytest

from pipeline.cli import main


def test_usage_lists_every_command(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    for command in ("run", "capture", "fuse", "sink", "calibrate", "metrics", "train", "eval", "export"):
        assert f"  {command}" in out


def test_unknown_command_is_one_clear_error(capsys):
    assert main(["fly"]) == 2
    assert "unknown command 'fly'" in capsys.readouterr().err


def test_fuse_with_image_files_fuses_one_pair(tmp_path, capsys):
    rng = np.random.default_rng(0)
    cv2.imwrite(str(tmp_path / "v.png"), rng.integers(0, 255, (96, 128, 3), dtype=np.uint8))
    cv2.imwrite(str(tmp_path / "t.png"), rng.integers(0, 255, (96, 128), dtype=np.uint8))
    code = main(["fuse", "--visible", str(tmp_path / "v.png"), "--thermal", str(tmp_path / "t.png"),
                 "--output", str(tmp_path / "f.png"), "--engine", "blend"])
    assert code == 0
    assert cv2.imread(str(tmp_path / "f.png")).shape == (96, 128, 3)
    assert main(["fuse", "--visible", str(tmp_path / "missing.png"), "--thermal", str(tmp_path / "t.png"),
                 "--output", str(tmp_path / "g.png")]) == 2
    assert "not found" in capsys.readouterr().err


def test_fuse_stage_flags_start_the_stage(capsys):
    assert main(["fuse", "--visible-in", "ipc:///tmp/x", "--thermal-in", "ipc:///tmp/y", "--output",
                 "ipc:///tmp/z", "--engine", "nonsense"]) == 2
    assert "unknown engine 'nonsense'" in capsys.readouterr().err


def test_fuse_help_shows_both_modes(capsys):
    with pytest.raises(SystemExit):
        main(["fuse", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--visible-in" in out and "skyfuse fuse --visible V --thermal T --output F" in out
