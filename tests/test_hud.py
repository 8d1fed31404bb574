"""HUD panel, picture-in-picture and thermal colour map: what changes on the picture."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import SkyfuseError
from pipeline.hud import HudInfo, draw_hud, hud_rect, picture_in_picture, thermal_colormap

INFO = HudInfo(fps=29.97, latency_ms=42.31, drops=3, engine="pyramid",
               capture_wall_ns=1_700_000_000_123_000_000)


def test_info_lines_show_the_values():
    assert INFO.lines() == ["engine pyramid", "30.0 fps", "latency 42.3 ms", "drops 3",
                            "2023-11-14 22:13:20.123Z"]
    assert HudInfo(fps=10).lines() == ["10.0 fps"]


@pytest.mark.parametrize("background", [20, 235])
def test_panel_changes_pixels_only_inside_its_rectangle_and_is_readable(background):
    image = np.full((512, 640, 3), background, np.uint8)
    out = draw_hud(image, INFO)
    assert out is image  # drawn in place
    x, y, w, h = hud_rect(image.shape, INFO.lines())
    assert 0 < w < 640 and 0 < h < 512
    changed = np.argwhere((image != background).any(axis=2))
    assert changed[:, 0].min() >= y and changed[:, 0].max() < y + h
    assert changed[:, 1].min() >= x and changed[:, 1].max() < x + w
    panel = image[y : y + h, x : x + w]
    assert panel.min() < 64 and panel.max() > 200  # light text on a dark panel, on any background


def test_different_values_draw_different_text():
    first = draw_hud(np.zeros((256, 320, 3), np.uint8), ["latency 10.0 ms"])
    second = draw_hud(np.zeros((256, 320, 3), np.uint8), ["latency 99.0 ms"])
    assert (first != second).any()


def test_gray_image_and_empty_hud():
    gray = np.full((120, 160), 128, np.uint8)
    assert (draw_hud(gray, ["x"]) != 128).any()
    image = np.full((120, 160, 3), 128, np.uint8)
    assert (draw_hud(image, []) == 128).all()


def test_picture_in_picture_places_thumbnails_bottom_right():
    image = np.zeros((512, 640, 3), np.uint8)
    visible = np.full((480, 640, 3), (0, 0, 200), np.uint8)  # red
    thermal = np.full((512, 640), 40000, np.uint16)
    thermal[:256] = 1000  # top half dark, bottom half bright after stretching
    picture_in_picture(image, [visible, thermal], scale=0.25)
    # thermal is the rightmost thumbnail: 160 wide, 128 high, 8 px from the corner
    assert (image[512 - 8 - 128 + 2 : 512 - 8 - 66, 640 - 8 - 158 : 640 - 10] == 0).all()
    assert (image[512 - 8 - 62 : 512 - 10, 640 - 8 - 158 : 640 - 10] == 255).all()
    # visible sits to its left, 120 high (aspect kept)
    red = image[512 - 8 - 118 : 512 - 10, 640 - 16 - 160 - 158 : 640 - 16 - 162]
    assert (red == (0, 0, 200)).all()
    assert (image[:250] == 0).all()  # nothing drawn outside the corner


def test_picture_in_picture_shrinks_thumbnails_to_fit():
    image = np.zeros((64, 96, 3), np.uint8)
    picture_in_picture(image, [np.full((64, 96), 255, np.uint8)] * 3, scale=0.5)
    assert (image[:, :8] == 0).all()  # the row of three fits inside the margins


def test_thermal_colormap():
    gray = np.tile(np.arange(256, dtype=np.uint8), (4, 1))
    coloured = thermal_colormap(gray)
    assert coloured.shape == (4, 256, 3) and coloured.dtype == np.uint8
    assert not (coloured[..., 0] == coloured[..., 2]).all()  # false colour, not gray
    wide = thermal_colormap(gray.astype(np.uint16) * 200, "jet")  # 16-bit is stretched to 8-bit
    assert (wide == thermal_colormap(gray, "jet")).all()
    with pytest.raises(SkyfuseError, match="unknown colour map 'rainbowz'"):
        thermal_colormap(gray, "rainbowz")
