"""The classical engines and the rig pre-warp: the baselines every learned engine must beat."""

import cv2
import numpy as np
import pytest

from core.errors import SkyfuseError
from core.rig import Rig
from engines.classical import BlendEngine, PyramidEngine
from engines.colour import merge_luma, split_luma
from engines.registry import create_engine


def scene(seed: int = 0, shape=(128, 160)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 255, shape, dtype=np.uint8), (0, 0), 2)


def test_split_and_merge_luma_round_trip_keeps_colour():
    bgr = np.dstack([scene(1), scene(2), scene(3)])
    luma, ycrcb = split_luma(bgr)
    assert luma.dtype == np.uint8 and luma.shape == bgr.shape[:2]
    back = merge_luma(luma.astype(np.float32), ycrcb)
    assert np.abs(back.astype(int) - bgr).max() <= 3  # YCrCb rounding only


@pytest.mark.parametrize("engine", [BlendEngine(), PyramidEngine()])
def test_fusion_keeps_visible_chroma_and_takes_thermal_luminance(engine):
    visible = np.zeros((1, 96, 128, 3), np.uint8)
    visible[..., 2] = 180  # a red scene
    thermal = np.zeros((1, 96, 128), np.uint8)
    thermal[0, 40:56, 56:72] = 255  # a hot object the visible camera does not see
    fused = engine.fuse(visible, thermal).fused[0]
    hot, cold = fused[44:52, 60:68].mean(axis=(0, 1)), fused[5:15, 5:15].mean(axis=(0, 1))
    assert hot.mean() > cold.mean() + 40, "the hot object shows in the fused image"
    assert cold[2] > cold[0] + 50 and cold[2] > cold[1] + 50, "the scene stays red"


def test_pyramid_keeps_the_sharper_detail_of_each_camera():
    edges_visible = np.zeros((128, 160), np.uint8)
    edges_visible[:, 40:] = 200  # a strong vertical edge only the visible camera sees
    edges_thermal = np.full((128, 160), 100, np.uint8)
    edges_thermal[80:, :] = 250  # a horizontal edge only the thermal camera sees
    visible = cv2.cvtColor(edges_visible, cv2.COLOR_GRAY2BGR)[None]
    fused = cv2.cvtColor(PyramidEngine().fuse(visible, edges_thermal[None]).fused[0], cv2.COLOR_BGR2GRAY)
    blend = cv2.cvtColor(BlendEngine().fuse(visible, edges_thermal[None]).fused[0], cv2.COLOR_BGR2GRAY)
    for image in (fused, blend):
        assert abs(int(image[40, 60]) - int(image[40, 20])) > 50
        assert abs(int(image[100, 20]) - int(image[60, 20])) > 40
    step_pyramid = abs(int(fused[40, 41]) - int(fused[40, 38]))
    step_blend = abs(int(blend[40, 41]) - int(blend[40, 38]))
    assert step_pyramid > 1.5 * step_blend, "max-detail keeps the edge sharp, a blend halves it"


def test_pyramid_of_identical_inputs_is_the_input():
    image = scene(4)
    assert np.array_equal(PyramidEngine().fuse_luma(image, image), image)


def test_engines_process_batches_pair_by_pair():
    visible = np.stack([cv2.cvtColor(scene(i), cv2.COLOR_GRAY2BGR) for i in range(3)])
    thermal = np.stack([scene(10 + i) for i in range(3)])
    batch = PyramidEngine().fuse(visible, thermal).fused
    for i in range(3):
        single = PyramidEngine().fuse(visible[i:i + 1], thermal[i:i + 1]).fused[0]
        assert np.array_equal(batch[i], single)


def test_engine_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="differ"):
        BlendEngine().fuse(np.zeros((1, 10, 10, 3), np.uint8), np.zeros((1, 10, 12), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        BlendEngine().fuse(np.zeros((1, 10, 10, 3), np.float32), np.zeros((1, 10, 10), np.uint8))


def test_registry_names_and_clear_errors():
    assert create_engine("blend", thermal_weight=0.3).thermal_weight == 0.3
    with pytest.raises(SkyfuseError, match="unknown engine 'nope'"):
        create_engine("nope")
    with pytest.raises(SkyfuseError, match="thermal_weight"):
        create_engine("blend", thermal_weight=3)
    with pytest.raises(SkyfuseError, match="cannot be loaded"):
        create_engine("no_such_module:Engine")


def test_rig_prewarp_matches_the_homography():
    rig = Rig((320, 240), (160, 128), np.array([[0.6, 0.05, -20.0], [-0.04, 0.6, -8.0], [0, 0, 1.0]]))
    visible = np.zeros((240, 320, 3), np.uint8)
    cv2.circle(visible, (200, 120), 6, (255, 255, 255), -1)
    warped = rig.warp_visible(visible, (160, 128))
    expected = rig.visible_to_thermal @ [200, 120, 1]
    ys, xs = np.nonzero(warped[..., 0] > 128)
    assert abs(xs.mean() - expected[0] / expected[2]) < 0.5
    assert abs(ys.mean() - expected[1] / expected[2]) < 0.5
    # A visible frame at half resolution maps to the same place: the homography is rescaled.
    half = rig.warp_visible(cv2.resize(visible, (160, 120)), (160, 128))
    ys2, xs2 = np.nonzero(half[..., 0] > 128)
    assert abs(xs2.mean() - xs.mean()) < 1 and abs(ys2.mean() - ys.mean()) < 1


def test_rig_file_round_trip_and_bad_files(tmp_path):
    rig = Rig((1920, 1080), (640, 512), np.diag([0.5, 0.5, 1.0]), time_offset_s=-0.033, method="target")
    path = tmp_path / "rig.json"
    rig.save(path)
    loaded = Rig.load(path)
    assert loaded.visible_size == (1920, 1080) and loaded.time_offset_s == -0.033
    assert np.allclose(loaded.visible_to_thermal, rig.visible_to_thermal)
    for text, message in [("{", "not readable JSON"), ('{"visible_size": [1, 1]}', "invalid"),
                          ('{"visible_size": [4, 4], "thermal_size": [4, 4], "visible_to_thermal": '
                           '[[0, 0, 0], [0, 0, 0], [0, 0, 1]]}', "invertible")]:
        path.write_text(text)
        with pytest.raises(SkyfuseError, match=message):
            Rig.load(path)
    with pytest.raises(SkyfuseError, match="not found"):
        Rig.load(tmp_path / "missing.json")
