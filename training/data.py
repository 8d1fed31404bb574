"""Readers for visible/thermal image pairs, and the fixed RoadScene train/test split.

Every reader returns `Pair`s of luminance images, float32 in [0, 1], (H, W), same size per pair:
- RoadScene layout (`cropinfrared/` + `crop_LR_visible/`, matching file names): aligned pairs.
- WiSARD layout (`pairs.csv` with sequence,thermal,visible columns): real, misaligned drone pairs. The
  visible camera sees a wider field; as in MISFIT-V, its frame is centre-cropped to 45/64 of its width
  and resized to the thermal size to roughly match the thermal view.
- Any folder with two sub-folders of images with matching file stems (`visible|vis|rgb` and
  `thermal|ir|infrared`).
"""

from __future__ import annotations

import csv
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from core.errors import SkyfuseError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
VISIBLE_DIRS = ("crop_LR_visible", "visible", "vis", "rgb")
THERMAL_DIRS = ("cropinfrared", "thermal", "ir", "infrared")
WISARD_VISIBLE_WIDTH = 45 / 64  # fraction of the visible width that the thermal camera sees (MISFIT-V)
ROADSCENE_TEST_PAIRS = 100
SPLIT_SEED = 20220723  # fixed: every model is trained and scored on the same split


@dataclass
class Pair:
    name: str
    visible: np.ndarray  # (H, W) float32 luminance in [0, 1]
    thermal: np.ndarray  # (H, W) float32 in [0, 1]


@dataclass(frozen=True)
class PairPaths:
    name: str
    visible: Path
    thermal: Path
    visible_crop: float = 1.0  # keep this centred fraction of the visible width, then resize to thermal


def read_luma(path: Path) -> np.ndarray:
    """Luminance (Y of YCrCb for colour, 16-bit scaled to 8-bit range) as float32 in [0, 1]."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise SkyfuseError(f"cannot read image {path}")
    scale = 65535.0 if image.dtype == np.uint16 else 255.0
    if image.ndim == 3:
        image = cv2.cvtColor(image[..., :3], cv2.COLOR_BGR2YCrCb)[..., 0]
    return image.astype(np.float32) / scale


def load_pair(paths: PairPaths) -> Pair:
    visible, thermal = read_luma(paths.visible), read_luma(paths.thermal)
    if paths.visible_crop < 1.0:
        w = visible.shape[1]
        keep = int(round(w * paths.visible_crop))
        visible = visible[:, (w - keep) // 2 : (w - keep) // 2 + keep]
    if visible.shape != thermal.shape:
        visible = cv2.resize(visible, thermal.shape[::-1], interpolation=cv2.INTER_AREA)
    return Pair(paths.name, visible, thermal)


def _images(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}


def folder_pairs(root: Path) -> list[PairPaths]:
    """Pairs from a visible and a thermal sub-folder with matching stems (RoadScene is one such layout)."""
    visible_dir = next((root / d for d in VISIBLE_DIRS if (root / d).is_dir()), None)
    thermal_dir = next((root / d for d in THERMAL_DIRS if (root / d).is_dir()), None)
    if visible_dir is None or thermal_dir is None:
        raise SkyfuseError(
            f"{root}: expected a visible folder ({'|'.join(VISIBLE_DIRS)}) and a thermal folder "
            f"({'|'.join(THERMAL_DIRS)}), or a pairs.csv"
        )
    visible, thermal = _images(visible_dir), _images(thermal_dir)
    names = sorted(visible.keys() & thermal.keys())
    if not names:
        raise SkyfuseError(
            f"{root}: no image names in common between {visible_dir.name}/ and {thermal_dir.name}/"
        )
    return [PairPaths(n, visible[n], thermal[n]) for n in names]


def wisard_pairs(root: Path) -> list[PairPaths]:
    """Pairs listed in a WiSARD-style pairs.csv (rows with no visible frame are skipped)."""
    with open(root / "pairs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"thermal", "visible"} <= rows[0].keys():
        raise SkyfuseError(f"{root / 'pairs.csv'}: needs 'thermal' and 'visible' columns")
    return [
        PairPaths(Path(r["thermal"]).stem, root / r["visible"], root / r["thermal"], WISARD_VISIBLE_WIDTH)
        for r in rows
        if r["visible"]
    ]


def find_pairs(root: str | Path) -> list[PairPaths]:
    """All pairs under `root`, whichever supported layout it has."""
    root = Path(root)
    if not root.is_dir():
        raise SkyfuseError(f"data folder {root} does not exist")
    return wisard_pairs(root) if (root / "pairs.csv").is_file() else folder_pairs(root)


def split(pairs: list[PairPaths], n_test: int = ROADSCENE_TEST_PAIRS, seed: int = SPLIT_SEED):
    """(train, test): a seeded permutation of the name-sorted pairs; the first `n_test` are the test set.

    For RoadScene (221 pairs) this is the documented split: 100 test, 121 train. With fewer than
    2 * n_test pairs, half (rounded down) is used for testing."""
    ordered = sorted(pairs, key=lambda p: p.name)
    n_test = min(n_test, len(ordered) // 2)
    order = np.random.default_rng(seed).permutation(len(ordered))
    test = sorted((ordered[i] for i in order[:n_test]), key=lambda p: p.name)
    train = sorted((ordered[i] for i in order[n_test:]), key=lambda p: p.name)
    return train, test


def pair_seed(name: str, seed: int = SPLIT_SEED) -> list[int]:
    """A per-pair seed that depends only on the pair's name, so a test deformation never changes when
    pairs are added or reordered."""
    return [seed, zlib.crc32(name.encode())]
