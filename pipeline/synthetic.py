"""The synthetic flight: a procedural landscape seen from above by a drone carrying two cameras.

A large ground map (visible colour and surface temperature) is rendered once from the seed: grass and
soil, striped crop fields, ponds, roads and a dirt track, buildings with shadows, woods, rocks. Per frame
only a view is warped out of it, the few moving people and vehicles are drawn, and sensor noise is added
from a pre-generated bank, so a 1280×720 visible plus a 640×512 thermal frame cost a few ms.

Geometry. The ground is a plane and the visible camera looks straight down, so world -> visible pixel is
a similarity (drone position and yaw). The thermal camera is rigidly mounted beside it with a narrower
field of view, a roll, a small pitch and a baseline offset; because the ground is planar, visible pixel
-> thermal pixel is exactly the homography `visible_to_thermal`, constant over the flight. Each thermal
frame is rendered through that homography (world -> visible -> thermal), so the ground truth holds by
construction; moving objects are flat polygons on the ground and obey it too.

Cross-modal appearance. Temperature is not a function of colour: asphalt is dark and hot, metal roofs
bright and cold, water dark and cold, canopies dark and cool, ploughed soil dark and warm, shadows cooler;
the fine textures of the two maps are independent noise. People and vehicles wear colours close to the
ground around them (hard to see in visible) but bright in thermal: people at 31-36 °C, car engines at
42-48 °C. `time_of_day` sets the ground's temperatures: by day sun-heated asphalt and dark roofs
(36-43 °C) are as hot as people; by night the ground lies at 1-16 °C and the movers stand out.

Units. Thermal frames are uint8 with 5..45 °C mapped linearly to 0..255 (`thermal_bits=8`), or uint16 raw
counts in centikelvin, (T + 273.15) * 100 (`thermal_bits=16`, needs AGC). Distances are in world pixels,
one world pixel = one visible pixel (about 10 cm on the ground).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import cv2
import numpy as np

from core.errors import SkyfuseError
from core.rig import Rig

THERMAL8_RANGE_C = (5.0, 45.0)  # °C mapped to 0..255 in 8-bit thermal frames
KELVIN_OFFSET = 273.15
_MIN_WORLD_PX = 640  # room for the largest feature (a 520 px field window) even behind tiny cameras
_MAX_WORLD_PX = 9000  # beyond this the ground map would not fit comfortably in memory


@dataclass
class FlightConfig:
    seed: int = 0
    visible_size: tuple[int, int] = (1280, 720)  # (width, height)
    thermal_size: tuple[int, int] = (640, 512)
    visible_fps: float = 30.0
    thermal_fps: float = 30.0
    fov_ratio: float = 2.0  # visible / thermal ground footprint width (ratio of tan(half horizontal FOV))
    rotation_deg: float = 2.0  # roll of the thermal camera vs the visible one (+ = clockwise on screen)
    offset_px: tuple[float, float] = (12.0, -8.0)  # visible centre appears at thermal centre - offset_px
    tilt_deg: float = 1.0  # pitch of the thermal camera vs the visible one: the projective part
    visible_hfov_deg: float = 60.0  # horizontal FOV of the visible camera (only matters for tilt_deg)
    time_offset_s: float = 0.0  # thermal frame stamped t shows the instant t + time_offset_s
    thermal_bits: int = 8  # 8 -> uint8 frames, 16 -> uint16 centikelvin counts (needs AGC)
    speed_px_s: float = 60.0  # drone ground speed, world (= visible) pixels per second
    # 0 = constant speed; e.g. 0.6 swings the ground speed between 0.4x and 1.6x speed_px_s (a pilot
    # speeding up and braking), which makes a time offset between the streams measurable
    speed_variation: float = 0.0
    visible_noise: float = 2.0  # std of visible sensor noise, grey levels
    thermal_noise_k: float = 0.15  # std of temporal thermal noise (NETD), kelvin
    # surface temperatures of a sunny afternoon (asphalt and dark roofs hotter than people) or of a clear
    # night (people and engines the warmest things); the visible map is the same daylight picture for both
    time_of_day: str = "day"
    people: int = 40  # walkers scattered along the flight path
    vehicles: int = 12  # cars driving back and forth on the roads

    def validate(self) -> None:
        """Raise SkyfuseError naming the first unusable field."""
        sizes = {"visible_size": self.visible_size, "thermal_size": self.thermal_size}
        for name, size in sizes.items():
            if len(size) != 2 or min(size) < 16:
                raise SkyfuseError(f"synthetic flight: {name} must be (width, height) of at least 16 px")
        positive = {"visible_fps": self.visible_fps, "thermal_fps": self.thermal_fps,
                    "fov_ratio": self.fov_ratio}
        for name, value in positive.items():
            if not (math.isfinite(value) and value > 0):
                raise SkyfuseError(f"synthetic flight: {name} must be positive, got {value}")
        if self.thermal_bits not in (8, 16):
            raise SkyfuseError(f"synthetic flight: thermal_bits must be 8 or 16, got {self.thermal_bits}")
        if not 1.0 <= self.visible_hfov_deg <= 150.0 or abs(self.tilt_deg) > 30.0:
            raise SkyfuseError("synthetic flight: visible_hfov_deg must be 1..150 and |tilt_deg| <= 30")
        if min(self.people, self.vehicles) < 0 or min(self.speed_px_s, self.visible_noise,
                                                        self.thermal_noise_k) < 0:
            raise SkyfuseError("synthetic flight: counts, speed and noise levels must not be negative")
        if self.time_of_day not in TIMES_OF_DAY:
            raise SkyfuseError(f"synthetic flight: time_of_day must be day or night, got "
                               f"{self.time_of_day!r}")
        if not 0.0 <= self.speed_variation <= 0.9:
            raise SkyfuseError(f"synthetic flight: speed_variation must be 0..0.9, got "
                               f"{self.speed_variation}")


def config_field_types() -> dict[str, type]:
    """FlightConfig field name -> the Python type of its value (for parsing `key=value` overrides)."""
    defaults = FlightConfig()
    return {f.name: type(getattr(defaults, f.name)) for f in fields(FlightConfig)}


# ---------------------------------------------------------------------------------------------- geometry

def _translation(x: float, y: float) -> np.ndarray:
    return np.array([[1.0, 0.0, x], [0.0, 1.0, y], [0.0, 0.0, 1.0]])


def true_rig(cfg: FlightConfig) -> Rig:
    """The rig a flight with `cfg` renders with (no need to build the flight's world for it)."""
    return Rig(tuple(cfg.visible_size), tuple(cfg.thermal_size), visible_to_thermal_homography(cfg),
               cfg.time_offset_s, "synthetic-truth")


def visible_to_thermal_homography(cfg: FlightConfig) -> np.ndarray:
    """Plane-induced homography visible px -> thermal px of the rig in `cfg`.

    Both cameras are pinhole cameras with square pixels; the thermal one is rotated by roll (about the
    optical axis) after pitch (about its x axis) relative to the visible one, and its focal length makes
    its ground footprint 1/fov_ratio as wide. The result is shifted so that the visible image centre lands
    exactly on the thermal centre minus offset_px.
    """
    (vw, vh), (tw, th) = cfg.visible_size, cfg.thermal_size
    f_v = (vw / 2) / math.tan(math.radians(cfg.visible_hfov_deg) / 2)
    f_t = f_v * cfg.fov_ratio * tw / vw
    roll, tilt = math.radians(cfg.rotation_deg), math.radians(cfg.tilt_deg)
    rz = np.array([[math.cos(roll), -math.sin(roll), 0], [math.sin(roll), math.cos(roll), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(tilt), -math.sin(tilt)], [0, math.sin(tilt), math.cos(tilt)]])
    g = np.diag([f_t, f_t, 1.0]) @ rz @ rx @ np.diag([1 / f_v, 1 / f_v, 1.0])
    u0, v0 = g[0, 2] / g[2, 2], g[1, 2] / g[2, 2]  # where the visible centre ray lands before the shift
    shift = _translation(tw / 2 - cfg.offset_px[0] - u0, th / 2 - cfg.offset_px[1] - v0)
    h = shift @ g @ _translation(-vw / 2, -vh / 2)
    return h / h[2, 2]


def _project(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 3×3 homography to (..., 2) points."""
    p = points @ matrix[:2, :2].T + matrix[:2, 2]
    w = points @ matrix[2, :2] + matrix[2, 2]
    return p / w[..., None]


# ------------------------------------------------------------------------------------------ ground map

# material: (BGR colour 0..255, surface temperature °C by day, by night). By day (a sunny afternoon) the
# sun heats dark, dry surfaces: asphalt and tar roofs are hotter than people, shade and water are cool. On a
# clear night (air about 10 °C) surfaces cool by radiation to the sky: grass and metal roofs drop below the
# air, water and asphalt, which store the day's heat, stay warmest; the ground spans about 1..16 °C.
_SOIL, _GRASS = ((70, 100, 125), 27.0, 10.0), ((60, 125, 85), 19.0, 6.0)
_CROPS = [((55, 140, 95), 18.0, 7.0), ((90, 175, 195), 25.0, 9.0), ((50, 75, 100), 31.0, 11.0),
          ((75, 150, 120), 21.0, 8.0)]
_WATER = ((70, 62, 35), 11.0, 13.0)
_ASPHALT, _TRACK = ((82, 84, 88), 36.0, 16.0), ((130, 160, 180), 29.0, 11.0)
_ROOFS = [((55, 65, 150), 31.0, 9.0), ((180, 180, 175), 7.0, 1.0), ((58, 58, 62), 43.0, 8.0),
          ((120, 130, 140), 27.0, 11.0)]
_CANOPY, _ROCK = ((40, 85, 45), 16.0, 10.0), ((135, 135, 130), 30.0, 13.0)
# by day / by night: spread of the ground's own warmth field (sun exposure, soil water), kelvin a cast
# shadow is cooler (none without sun), kelvin car bodies lie below their day temperature (27..31 °C), and
# kelvin an engine hood lies above its car's body (42..46 °C by day, 44..48 °C by night)
_WARMTH_K = {"day": 2.0, "night": 1.0}
_SHADOW_COOL_K = {"day": 4.0, "night": 0.0}
_CAR_COOLER_K = {"day": 0.0, "night": 13.0}
_HOOD_WARMER_K = {"day": 15.0, "night": 30.0}
TIMES_OF_DAY = ("day", "night")
_SHADOW_DIR = np.array([0.8, 0.6])  # shadows fall towards +x, +y in world px
_SHADOW_DARKEN = 0.5


def _noise_field(rng: np.random.Generator, size: int, cells: int, octaves: int = 1) -> np.ndarray:
    """Smooth random field of unit-ish spread: random grids upsampled with cubic interpolation, octaves
    halving in amplitude; summed at the smallest resolution that holds the finest octave, then enlarged."""
    work = min(size, 8 * cells * 2 ** (octaves - 1))
    out = np.zeros((work, work), np.float32)
    for octave in range(octaves):
        n = min(cells * 2**octave, size)
        grid = rng.standard_normal((n + 1, n + 1), dtype=np.float32) * np.float32(0.5**octave)
        out += cv2.resize(grid, (work, work), interpolation=cv2.INTER_CUBIC)
    out *= np.float32(1.0 / sum(0.5**o for o in range(octaves)))
    return out if work == size else cv2.resize(out, (size, size), interpolation=cv2.INTER_CUBIC)


def _affine(x: np.ndarray, scale: float, offset: float) -> np.ndarray:
    """x * scale + offset for a large float image, in one vectorised pass."""
    return cv2.addWeighted(x, scale, x, 0.0, offset)


class _Ground:
    """Colour (uint8 BGR) and temperature (float32 °C) maps under construction, painted with alpha masks
    in local windows. Full-map work is done per channel with OpenCV: 3-channel float temporaries of a
    3000² map cost more in page faults than in arithmetic."""

    def __init__(self, size: int, rng: np.random.Generator, time_of_day: str):
        self.size, self.rng = size, rng
        self.night = time_of_day == "night"  # which temperature of each material (index 1 + night)
        grass = np.clip(_affine(_noise_field(rng, size, 5, 3), 1.6, 0.5), 0, 1)
        self.colour = cv2.merge([cv2.convertScaleAbs(grass, alpha=g - s, beta=s)  # both ends >= 0
                                 for g, s in zip(_GRASS[0], _SOIL[0])])
        # temperature follows its own low-frequency field (sun exposure, soil water) besides the cover
        soil, grass_c = _SOIL[1 + self.night], _GRASS[1 + self.night]
        warmth = _affine(_noise_field(rng, size, 7, 2), _WARMTH_K[time_of_day], soil)
        self.temp = cv2.scaleAdd(grass, grass_c - soil, warmth)
        self.shadow = np.zeros((size, size), np.float32)

    def paint(self, mask: np.ndarray, x0: int, y0: int, material: tuple, temp_var: np.ndarray | float = 0.0,
              shade: np.ndarray | float = 1.0) -> None:
        """Composite `material` through uint8 `mask` (255 = opaque) placed with its corner at (x0, y0).

        Works in strips of rows, each cut to the bounding box of its mask pixels, so long thin shapes
        (roads across the map) cost only their own area."""
        temp_var, shade = np.broadcast_to(temp_var, mask.shape), np.broadcast_to(shade, mask.shape)
        for top in range(0, mask.shape[0], 128):
            x, y, w, h = cv2.boundingRect(mask[top:top + 128])
            if w == 0:
                continue
            local = (slice(top + y, top + y + h), slice(x, x + w))
            win = (slice(y0 + top + y, y0 + top + y + h), slice(x0 + x, x0 + x + w))
            a = mask[local].astype(np.float32) / 255.0
            colour = np.float32(material[0]) * shade[local][..., None].astype(np.float32)
            old = self.colour[win].astype(np.float32)
            self.colour[win] = np.clip(old + a[..., None] * (colour - old) + 0.5, 0, 255).astype(np.uint8)
            self.temp[win] += a * (material[1 + self.night] + temp_var[local] - self.temp[win])

    def shade(self, factor: np.ndarray) -> None:
        """Multiply the colour map by a per-pixel float factor."""
        self.colour = cv2.merge([cv2.multiply(c, factor, dtype=cv2.CV_8U) for c in cv2.split(self.colour)])

    def window(self, centre: np.ndarray, half: int) -> tuple[np.ndarray, int, int]:
        """A blank local mask of side 2*half around centre (clipped to the map) and its corner."""
        x0, y0 = (int(np.clip(c - half, 0, self.size - 2 * half)) for c in centre)
        return np.zeros((2 * half, 2 * half), np.uint8), x0, y0

    def random_point(self, margin: int) -> np.ndarray:
        return self.rng.uniform(margin, self.size - margin, 2)


def _draw_fields(g: _Ground, count: int) -> None:
    for _ in range(count):
        w, h, angle = g.rng.uniform(150, 420), g.rng.uniform(120, 380), g.rng.uniform(0, 180)
        mask, x0, y0 = g.window(g.random_point(260), 260)
        box = cv2.boxPoints(((260.0, 260.0), (w, h), angle))
        cv2.fillConvexPoly(mask, np.round(box * 16).astype(np.int32), 255, cv2.LINE_AA, 4)
        theta, period = math.radians(angle), g.rng.uniform(5, 11)
        yy, xx = np.mgrid[0:520, 0:520].astype(np.float32)
        phase = (xx * math.cos(theta) + yy * math.sin(theta)) * (2 * math.pi / period)
        # rows bright where the furrows between them are warm: the stripes invert between modalities
        crop = _CROPS[g.rng.integers(len(_CROPS))]
        g.paint(mask, x0, y0, crop, temp_var=-1.2 * np.sin(phase), shade=1 + 0.12 * np.sin(phase))


def _draw_ponds(g: _Ground, count: int) -> None:
    for _ in range(count):
        half = int(g.rng.uniform(60, 140))
        mask, x0, y0 = g.window(g.random_point(half + 2), half)
        yy, xx = np.mgrid[-half:half, -half:half].astype(np.float32)
        wobble = _noise_field(g.rng, 2 * half, 4)
        inside = np.hypot(xx / 0.9, yy / 0.6) / half + 0.25 * wobble < 0.8
        mask[:] = cv2.GaussianBlur(inside.astype(np.uint8) * 255, (5, 5), 0)
        g.paint(mask, x0, y0, _WATER)


def _draw_roads(g: _Ground, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Straight asphalt roads across the map through its middle third, plus one curved dirt track."""
    roads, n = [], g.size
    for _ in range(count):
        through = g.rng.uniform(n / 3, 2 * n / 3, 2)
        angle = g.rng.uniform(0, math.pi)
        d = np.array([math.cos(angle), math.sin(angle)])
        a, b = through - d * n, through + d * n
        mask = np.zeros((n, n), np.uint8)
        width = int(g.rng.integers(18, 26))
        cv2.line(mask, tuple(np.round(a * 16).astype(int)), tuple(np.round(b * 16).astype(int)), 255,
                 width, cv2.LINE_AA, 4)
        g.paint(mask, 0, 0, _ASPHALT)
        roads.append((a, b))
    t = np.linspace(0, 1, 60)
    centre, radius = g.random_point(n // 4), g.rng.uniform(n / 6, n / 3)
    track = centre + radius * np.stack([np.cos(5 * t + 1), np.sin(3.3 * t)], axis=1)
    mask = np.zeros((n, n), np.uint8)
    cv2.polylines(mask, [np.round(track * 16).astype(np.int32)], False, 255, 7, cv2.LINE_AA, 4)
    g.paint(mask, 0, 0, _TRACK)
    return roads


def _draw_buildings(g: _Ground, count: int) -> None:
    for _ in range(count):
        mask, x0, y0 = g.window(g.random_point(80), 80)
        w, h, angle = g.rng.uniform(25, 70), g.rng.uniform(20, 55), g.rng.uniform(0, 90)
        box = cv2.boxPoints(((80.0, 80.0), (w, h), angle))
        shadow = np.zeros_like(mask)
        cv2.fillConvexPoly(shadow, np.round((box + _SHADOW_DIR * 12) * 16).astype(np.int32), 255,
                           cv2.LINE_AA, 4)
        g.shadow[y0:y0 + 160, x0:x0 + 160] = np.maximum(g.shadow[y0:y0 + 160, x0:x0 + 160], shadow / 255.0)
        cv2.fillConvexPoly(mask, np.round(box * 16).astype(np.int32), 255, cv2.LINE_AA, 4)
        g.paint(mask, x0, y0, _ROOFS[g.rng.integers(len(_ROOFS))])


def _draw_woods(g: _Ground, count: int) -> list[tuple[np.ndarray, int, int]]:
    """Clusters of round canopies; returns their masks to paint after the shadows are applied."""
    canopies = []
    for _ in range(count):
        mask, x0, y0 = g.window(g.random_point(120), 120)
        shadow = np.zeros_like(mask)
        spread = g.rng.uniform(15, 70)
        trees = np.clip(120 + g.rng.normal(0, spread, (int(g.rng.integers(3, 40)), 2)), 20, 220)
        for (x, y), r in zip(trees, g.rng.uniform(5, 13, len(trees))):
            sx, sy = np.array([x, y]) + _SHADOW_DIR * r * 0.9
            cv2.circle(shadow, (int(sx * 16), int(sy * 16)), int(r * 16), 255, -1, cv2.LINE_AA, 4)
            cv2.circle(mask, (int(x * 16), int(y * 16)), int(r * 16), 255, -1, cv2.LINE_AA, 4)
        win = (slice(y0, y0 + 240), slice(x0, x0 + 240))
        g.shadow[win] = np.maximum(g.shadow[win], shadow / 255.0)
        canopies.append((mask, x0, y0))
    return canopies


def _draw_rocks(g: _Ground, count: int) -> None:
    for _ in range(count):
        mask, x0, y0 = g.window(g.random_point(20), 20)
        angles = np.sort(g.rng.uniform(0, 2 * math.pi, 7))
        radii = g.rng.uniform(2, 7) * g.rng.uniform(0.6, 1.0, 7)
        pts = 20 + np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
        cv2.fillConvexPoly(mask, np.round(pts * 16).astype(np.int32), 255, cv2.LINE_AA, 4)
        g.paint(mask, x0, y0, _ROCK)


def _render_ground(size: int, rng: np.random.Generator,
                   time_of_day: str) -> tuple[np.ndarray, np.ndarray, list]:
    """(colour uint8 BGR, temperature float32 °C at `time_of_day`, roads) of a size×size map."""
    g = _Ground(size, rng, time_of_day)
    area = (size / 1000) ** 2  # features are counted per million map pixels (1 px ~ 10 cm: per 10 000 m²)
    _draw_fields(g, int(3 * area) + 1)
    _draw_ponds(g, int(0.4 * area) + 1)
    roads = _draw_roads(g, 2 + int(area > 4))
    _draw_buildings(g, int(4 * area) + 2)
    canopies = _draw_woods(g, int(5 * area) + 2)
    _draw_rocks(g, int(12 * area) + 2)
    shadow = cv2.GaussianBlur(g.shadow, (0, 0), 1.5)
    g.shade(_affine(shadow, _SHADOW_DARKEN - 1, 1.0))
    g.temp = cv2.scaleAdd(shadow, -_SHADOW_COOL_K[time_of_day], g.temp)
    for mask, x0, y0 in canopies:
        leaves = 1 + 0.25 * _noise_field(rng, mask.shape[0], 40)
        g.paint(mask, x0, y0, _CANOPY, temp_var=0.8 * leaves, shade=leaves)
    # independent fine textures: the two modalities share edges, not grain
    g.shade(_affine(_noise_field(rng, size, size // 6), 0.08, 1.0))
    g.temp = cv2.scaleAdd(_noise_field(rng, size, size // 5), 0.5, g.temp)
    g.temp = cv2.GaussianBlur(g.temp, (0, 0), 1.0)  # thermal optics and heat diffusion are blurrier
    return g.colour, g.temp, roads


# ------------------------------------------------------------------------------------------- movers

_PERSON = np.stack([np.cos(np.linspace(0, 2 * np.pi, 8, endpoint=False)) * 1.5,
                    np.sin(np.linspace(0, 2 * np.pi, 8, endpoint=False)) * 2.6], axis=1)  # along x = walk
_CAR = np.array([[-22, -9], [22, -9], [22, 9], [-22, 9]], float)
_HOOD = np.array([[10, -9], [22, -9], [22, 9], [10, 9]], float)  # front of the car: the engine
# (template, visible shade or None = not seen in visible, kelvin above the mover's temperature)
_PERSON_SHAPES = ((_PERSON * 1.7, None, -6.0), (_PERSON, 1.0, 0.0))  # warm halo: heat and optics blur


def _triangle(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Back-and-forth position in [-0.5, 0.5] for phase u (periods of 1) and the direction sign."""
    frac = np.mod(u, 1.0)
    return np.abs(2 * frac - 1) - 0.5, np.where(frac < 0.5, -1.0, 1.0)


@dataclass
class _Movers:
    """People walking back and forth near the flight path and cars on the roads (world px, seconds)."""

    centre: np.ndarray  # (n, 2) middle of each back-and-forth track
    direction: np.ndarray  # (n, 2) unit vector along the track
    length: np.ndarray  # (n,) track length
    speed: np.ndarray  # (n,) px/s
    phase: np.ndarray  # (n,)
    colour: np.ndarray  # (n, 3) BGR
    temp: np.ndarray  # (n,) °C

    def at(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Positions (n, 2) and heading unit vectors (n, 2) at time t."""
        pos, sign = _triangle(self.phase + t * self.speed / (2 * self.length))
        return self.centre + self.direction * (self.length * pos)[:, None], self.direction * sign[:, None]


def _unit(angles: np.ndarray) -> np.ndarray:
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _ground_colour_near(colour: np.ndarray, points: np.ndarray) -> np.ndarray:
    idx = np.clip(np.round(points).astype(int), 0, colour.shape[0] - 1)
    return colour[idx[:, 1], idx[:, 0]]


# -------------------------------------------------------------------------------------------- flight

class SyntheticFlight:
    """Frames of the two cameras of a drone flying a slow loop over a seeded landscape.

    Every frame is a pure function of (config, index): any order, any process gives the same pixels.
    The visible view is sampled nearest-neighbour from the (pre-smoothed) map because bilinear sampling
    of a 1280×720×3 view costs ~7 ms on the 2-core target; its error is at most half a pixel. The thermal
    view is sampled bilinearly through the exact homography.
    """

    def __init__(self, config: FlightConfig):
        config.validate()
        # sizes and offsets may arrive as lists (YAML); OpenCV and the rig want tuples
        self.config = cfg = replace(config, visible_size=tuple(int(v) for v in config.visible_size),
                                    thermal_size=tuple(int(v) for v in config.thermal_size),
                                    offset_px=tuple(float(v) for v in config.offset_px))
        self.visible_to_thermal = visible_to_thermal_homography(cfg)
        rng = np.random.default_rng(cfg.seed)
        (vw, vh), (tw, th) = cfg.visible_size, cfg.thermal_size
        thermal_corners = _project(np.linalg.inv(self.visible_to_thermal),
                                   np.array([[0, 0], [tw, 0], [0, th], [tw, th]], float))
        reach = max(math.hypot(vw, vh) / 2,
                    float(np.max(np.hypot(*(thermal_corners - [vw / 2, vh / 2]).T)))) + 8
        self._loop = (reach, 0.7 * reach, 0.06 * reach)  # ellipse radii and wobble of the flight path
        size = max(_MIN_WORLD_PX, int(math.ceil(2 * (self._loop[0] + self._loop[2] + reach))) + 16)
        if size > _MAX_WORLD_PX:
            raise SkyfuseError(f"synthetic flight: these camera sizes/fields of view need a {size} px map "
                               f"(limit {_MAX_WORLD_PX}); use smaller frames or a fov_ratio nearer 2")
        self._centre = np.array([size / 2, size / 2])
        self._omega = cfg.speed_px_s / (0.85 * reach)  # rad/s around the loop, about speed_px_s on the ground
        self._angle0 = rng.uniform(0, 2 * math.pi)
        colour, temp, roads = _render_ground(size, rng, cfg.time_of_day)
        self._people, self._cars = self._place_movers(rng, colour, roads)

        self._thermal_dtype = np.uint8 if cfg.thermal_bits == 8 else np.uint16
        # sensor noise: a bank of non-negative noise sliced at a random offset per frame; its mean is
        # taken off the map beforehand so the frames stay unbiased (one saturating add per frame)
        self._noise_pad = 32
        vis_mean = 2 * cfg.visible_noise
        self._visible_map = cv2.subtract(colour, (vis_mean,) * 3 + (0,))
        self._visible_noise = self._noise_bank(rng, (vh, vw, 3), vis_mean, cfg.visible_noise, np.uint8)
        scale = self._thermal_scale()
        th_sigma = cfg.thermal_noise_k * scale
        fixed = self._fixed_pattern(rng, tw, th) * scale + 2 * th_sigma  # non-negative
        self._thermal_fixed = np.clip(np.round(fixed), 0, None).astype(self._thermal_dtype)
        self._thermal_map = self._to_thermal_units(temp - 2 * th_sigma / scale - fixed.mean() / scale)
        self._thermal_noise = self._noise_bank(rng, (th, tw), 2 * th_sigma, th_sigma, self._thermal_dtype)

    # --------------------------------------------------------------------------------- public API
    def visible_time(self, index: int) -> float:
        return index / self.config.visible_fps

    def thermal_time(self, index: int) -> float:
        return index / self.config.thermal_fps

    def path_time(self, t: float) -> float:
        """The instant of the constant-speed loop where the drone is at scene time t: its derivative
        swings between 1 - speed_variation and 1 + speed_variation (two incommensurate sines)."""
        v = self.config.speed_variation
        return t + v * (0.6 * math.sin(2.3 * t) / 2.3 + 0.4 * math.sin(5.1 * t + 1.0) / 5.1)

    def world_to_visible(self, t: float) -> np.ndarray:
        """3×3 similarity from map px to visible px at scene time t (drone position and yaw)."""
        a = self._omega * self.path_time(t) + self._angle0
        rx, ry, wob = self._loop
        pos = self._centre + np.array([rx * math.cos(a) + wob * math.sin(3 * a),
                                       ry * math.sin(a) + wob * math.cos(2 * a)])
        vel = np.array([-rx * math.sin(a) + 3 * wob * math.cos(3 * a),
                        ry * math.cos(a) - 2 * wob * math.sin(2 * a)])
        # the camera's "up" points along the flight direction: image -y = velocity
        yaw = math.atan2(vel[1], vel[0]) + math.pi / 2
        c, s = math.cos(-yaw), math.sin(-yaw)
        vw, vh = self.config.visible_size
        rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        return _translation(vw / 2, vh / 2) @ rot @ _translation(-pos[0], -pos[1])

    def visible_frame(self, index: int) -> np.ndarray:
        """(H, W, 3) uint8 BGR frame `index`, the scene at visible_time(index)."""
        t = self.visible_time(index)
        m = self.world_to_visible(t)
        frame = cv2.warpAffine(self._visible_map, m[:2], self.config.visible_size, flags=cv2.INTER_NEAREST)
        self._draw_movers(frame, m, t, lambda number, movers, i, shade, warmer: None if shade is None
                          else tuple(float(c) * shade for c in movers.colour[i]))
        return cv2.add(frame, self._noise_slice(self._visible_noise, frame.shape, index, stream=0))

    def thermal_frame(self, index: int, with_movers: bool = True) -> np.ndarray:
        """(H, W) uint8 or uint16 frame `index`, the scene at thermal_time(index) + time_offset_s;
        with_movers=False gives the same frame without its people and vehicles (the ground they cover, the
        same noise), e.g. to see what a target does to the display of the ground around it."""
        t = self.thermal_time(index) + self.config.time_offset_s
        m = self.visible_to_thermal @ self.world_to_visible(t)
        frame = cv2.warpPerspective(self._thermal_map, m, self.config.thermal_size, flags=cv2.INTER_LINEAR)
        if with_movers:
            self._draw_movers(frame, m, t, lambda number, movers, i, shade, warmer:
                              int(self._to_thermal_units(movers.temp[i] + warmer)))
        frame = cv2.add(frame, self._thermal_fixed)
        return cv2.add(frame, self._noise_slice(self._thermal_noise, frame.shape, index, stream=1))

    def rig(self) -> Rig:
        """The true rig: the exact mapping and time offset this flight renders with."""
        return true_rig(self.config)

    def movers_at(self, t: float) -> np.ndarray:
        """Map positions (n, 2) of all people then all vehicles at scene time t (for tests and labels)."""
        return np.concatenate([self._people.at(t)[0], self._cars.at(t)[0]])

    def thermal_targets(self, index: int) -> np.ndarray:
        """(H, W) int32 map of thermal frame `index`: 0 on the ground, k + 1 on the pixels that mover k (as
        numbered by movers_at: people, then vehicles) covers in it, warm halo and engine included."""
        t = self.thermal_time(index) + self.config.time_offset_s
        labels = np.zeros(self.config.thermal_size[::-1], np.int32)
        self._draw_movers(labels, self.visible_to_thermal @ self.world_to_visible(t), t,
                          lambda number, movers, i, shade, warmer: int(number) + 1)
        return labels

    # ------------------------------------------------------------------------------- construction
    def _place_movers(self, rng: np.random.Generator, colour: np.ndarray, roads: list) -> tuple:
        cfg = self.config
        n = cfg.people
        a = self._angle0 + rng.uniform(0, 2 * math.pi, n)
        rx, ry, _ = self._loop
        near_path = self._centre + np.stack([rx * np.cos(a), ry * np.sin(a)], 1) + rng.normal(0, 0.3 * ry,
                                                                                              (n, 2))
        # clothes close to the ground colour: hard to spot in visible
        clothes = _ground_colour_near(colour, near_path) + rng.normal(0, 12, (n, 3))
        people = _Movers(near_path, _unit(rng.uniform(0, math.pi, n)), rng.uniform(20, 80, n),
                         rng.uniform(8, 16, n), rng.uniform(0, 1, n), np.clip(clothes, 0, 255),
                         rng.uniform(31, 36, n))
        m = cfg.vehicles
        road = rng.integers(len(roads), size=m)
        starts, ends = (np.array([roads[i][k] for i in road], float).reshape(m, 2) for k in (0, 1))
        direction = (ends - starts) / np.linalg.norm(ends - starts, axis=1, keepdims=True)
        lane = np.stack([-direction[:, 1], direction[:, 0]], 1) * rng.choice([-5.0, 5.0], (m, 1))
        # keep cars on the part of the road that lies inside the map
        length = np.full(m, self._centre[0] * 1.2)
        middle = (starts + ends) / 2 + lane
        paint = np.array([(60, 60, 60), (150, 150, 150), (40, 50, 90), (90, 80, 60), (70, 90, 80)], float)
        cars = _Movers(middle, direction, length, rng.uniform(60, 130, m), rng.uniform(0, 1, m),
                       paint[rng.integers(len(paint), size=m)],
                       rng.uniform(27, 31, m) - _CAR_COOLER_K[cfg.time_of_day])
        return people, cars

    def _thermal_scale(self) -> float:
        """Output units per kelvin."""
        if self.config.thermal_bits == 16:
            return 100.0
        return 255.0 / (THERMAL8_RANGE_C[1] - THERMAL8_RANGE_C[0])

    def _to_thermal_units(self, temp_c: np.ndarray | float) -> np.ndarray:
        if self.config.thermal_bits == 16:
            return np.clip(np.round((np.asarray(temp_c) + KELVIN_OFFSET) * 100), 0, 65535).astype(np.uint16)
        scaled = (np.asarray(temp_c) - THERMAL8_RANGE_C[0]) * self._thermal_scale()
        return np.clip(np.round(scaled), 0, 255).astype(np.uint8)

    @staticmethod
    def _fixed_pattern(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
        """Kelvin offsets of the microbolometer: column stripes and a warm lens centre (vignetting)."""
        columns = rng.normal(0, 0.08, width)[None, :]
        yy, xx = np.mgrid[0:height, 0:width]
        r2 = ((xx - width / 2) / width) ** 2 + ((yy - height / 2) / height) ** 2
        return (columns + 0.8 * (0.5 - r2)).astype(np.float32)

    def _noise_bank(self, rng: np.random.Generator, shape: tuple, mean: float, sigma: float,
                    dtype: type) -> np.ndarray:
        pad = self._noise_pad
        bank_shape = (shape[0] + pad, shape[1] + pad) + tuple(shape[2:])
        bank = rng.normal(mean, sigma, bank_shape) if sigma > 0 else np.zeros(bank_shape)
        return np.clip(np.round(bank), 0, np.iinfo(dtype).max).astype(dtype)

    # ------------------------------------------------------------------------------------- per frame
    def _noise_slice(self, bank: np.ndarray, shape: tuple, index: int, stream: int) -> np.ndarray:
        dy, dx = np.random.default_rng((self.config.seed, stream, index)).integers(0, self._noise_pad, 2)
        return bank[dy:dy + shape[0], dx:dx + shape[1]]

    def _draw_movers(self, frame: np.ndarray, world_to_image: np.ndarray, t: float, fill) -> None:
        """Draw the movers in view into `frame` (seen through `world_to_image` at time t), each shape filled
        with fill(number in movers_at, movers, index in them, visible shade or None, kelvin above the
        mover), or left out where that is None. Shapes are antialiased in visible only: thermal values and
        labels stay exact."""
        h, w = frame.shape[:2]
        cars = ((_CAR, 1.0, 0.0), (_HOOD, 0.6, _HOOD_WARMER_K[self.config.time_of_day]))
        people = len(self._people.temp)
        for movers, shapes, first in ((self._cars, cars, people), (self._people, _PERSON_SHAPES, 0)):
            pos, heading = movers.at(t)
            image_pos = _project(world_to_image, pos)
            inside = np.flatnonzero((image_pos[:, 0] > -40) & (image_pos[:, 0] < w + 40)
                                    & (image_pos[:, 1] > -40) & (image_pos[:, 1] < h + 40))
            for i in inside:
                rot = np.array([[heading[i, 0], -heading[i, 1]], [heading[i, 1], heading[i, 0]]])
                for template, shade, warmer in shapes:
                    value = fill(first + i, movers, i, shade, warmer)
                    if value is None:
                        continue
                    pts = _project(world_to_image, pos[i] + template @ rot.T)
                    cv2.fillConvexPoly(frame, np.round(pts * 16).astype(np.int32), value,
                                       cv2.LINE_AA if frame.ndim == 3 else cv2.LINE_8, 4)
