"""Reading the JSON-lines sidecars written beside recordings (pipeline/recorder.py's `Sidecar`), and what
a reader of a raw thermal recording (pipeline/thermal_recorder.py) needs to know of it: its pixel formats,
where its sidecar lies, and each frame's identity from that sidecar. Apart from the writers so that a source
(pipeline/sources.py, below the stages) can replay a raw recording without importing the recorders.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from core.errors import SkyfuseError

PIXEL_FORMATS = {np.dtype(np.uint8): "gray", np.dtype(np.uint16): "gray16le"}  # a raw recording's frames


def read_sidecar(path: str | os.PathLike) -> list[dict]:
    """The records of a sidecar; a torn last line (the writer was killed mid-line) is left out."""
    return load_sidecar(path)[0]


def load_sidecar(path: str | os.PathLike) -> tuple[list[dict], int]:
    """The records of a sidecar and how many torn last lines were left out (0 or 1): a writer killed
    mid-line leaves a line without its end, or, after a power cut, a tail the disk never got (zero bytes).
    An unreadable line elsewhere is damage, not a kill: it raises json.JSONDecodeError."""
    lines = Path(path).read_text(encoding="utf-8").split("\n")
    records = [json.loads(line) for line in lines[:-1] if line]
    if not lines[-1]:
        return records, 0
    try:
        records.append(json.loads(lines[-1]))
    except json.JSONDecodeError:
        return records, 1
    return records, 0


def sidecar_path(path: str | os.PathLike) -> Path:
    """The sidecar beside a raw recording: `PATH.frames.jsonl`."""
    path = Path(path)
    return path.with_name(path.name + ".frames.jsonl")


def read_frame_identities(path: str | os.PathLike) -> tuple[dict[int, tuple[int, int]], int]:
    """(seq, capture_ns) of the frames of the raw recording at `path` by their position in the file, from
    its sidecar, and how many torn last lines were left out (a kill mid-line). The sidecar may list frames
    past the file's end (a kill lost them from the file). Raises OSError when there is no sidecar,
    SkyfuseError when it is not one."""
    side = sidecar_path(path)
    try:
        records, torn = load_sidecar(side)
    except (ValueError, UnicodeDecodeError) as exc:  # json.JSONDecodeError is a ValueError
        raise SkyfuseError(f"{side} is damaged: {exc}") from None
    identities = {}
    for number, record in enumerate(records, start=1):
        values = [record.get(key) if isinstance(record, dict) else None
                  for key in ("frame", "seq", "capture_ns")]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            raise SkyfuseError(f"{side} line {number} is not a raw recording's frame record: {record}")
        identities[values[0]] = (values[1], values[2])
    return identities, torn
