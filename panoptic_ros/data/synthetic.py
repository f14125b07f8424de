"""Synthetic street scenes with exact panoptic ground truth, deterministic by seed, at any resolution.

A pinhole camera 1.5 m above a straight street looks down it: the road converges to a vanishing
point, sidewalks run along it, building facades (or a park's tree line) stand at the sidewalks'
outer edges, sky above. Cars (3-D boxes with cabin and wheels, parked in rows or driving),
people (head, torso, arms, legs; in groups or crossing) and bicycles (wheels and frame, in racks
or ridden) stand on the ground at sampled distances, so size follows perspective.

Everything is painted far to near into a map of *part* ids; each part carries a colour, a texture
kind, a class and an instance. The labels are therefore exactly the visible part of every object,
and the image is a few vectorised look-ups of that map plus texture, lighting and noise.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from panoptic_ros.classes import DEFAULT_LABEL_DIVISOR, SYNTHETIC

ROAD, SIDEWALK, BUILDING, VEGETATION, SKY, PERSON, CAR, BICYCLE = (
    SYNTHETIC.names.index(n) for n in ("road", "sidewalk", "building", "vegetation", "sky", "person", "car", "bicycle"))

CAMERA_HEIGHT = 1.5  # metres above the road
MAX_THING_DISTANCE = 45.0  # metres; farther things would be a few pixels tall
_SHIFT = 4  # cv2 drawing with 4 fractional bits: sub-pixel vertices keep small shapes in shape
_NOISE_MARGIN = 64  # the noise bank is this much larger than the image, for random offsets

# Texture kinds: amplitudes of fine, medium and coarse noise, and of the vertical gradient.
_TEXTURES = {
    "asphalt": (0.07, 0.03, 0.05, 0.0),
    "paving": (0.05, 0.04, 0.06, 0.0),
    "marking": (0.04, 0.03, 0.05, 0.0),
    "facade": (0.03, 0.03, 0.08, 0.0),
    "glass": (0.02, 0.05, 0.12, 0.0),
    "foliage": (0.10, 0.28, 0.15, 0.0),
    "bark": (0.10, 0.06, 0.0, 0.0),
    "sky": (0.006, 0.0, 0.05, 0.45),
    "cloud": (0.01, 0.05, 0.08, 0.2),
    "paint": (0.015, 0.01, 0.03, 0.0),
    "rubber": (0.05, 0.0, 0.0, 0.0),
    "cloth": (0.06, 0.05, 0.0, 0.0),
    "skin": (0.02, 0.0, 0.0, 0.0),
    "metal": (0.03, 0.0, 0.0, 0.0),
}
_TEXTURE_KINDS = tuple(_TEXTURES)
_TEXTURE_TABLE = np.array([_TEXTURES[k] for k in _TEXTURE_KINDS], dtype=np.float32)

_FACADE_COLOURS = ((205, 185, 150), (170, 162, 152), (150, 82, 62), (222, 216, 202), (122, 102, 84),
                   (192, 152, 108), (140, 140, 146), (180, 120, 90), (200, 200, 185))
_CAR_COLOURS = ((228, 228, 228), (28, 28, 30), (168, 170, 174), (105, 107, 112), (170, 25, 25), (30, 52, 140),
                (20, 30, 70), (30, 90, 50), (222, 190, 40), (190, 175, 140), (120, 30, 40), (60, 120, 170))
_SKIN_COLOURS = ((240, 200, 170), (222, 170, 130), (180, 130, 95), (130, 90, 60), (90, 60, 40))


@dataclass
class SyntheticScene:
    """One generated frame: RGB image and its exact panoptic ground truth."""

    image: np.ndarray  # uint8 (H, W, 3) RGB
    semantic: np.ndarray  # uint8 (H, W), SYNTHETIC train ids; no void
    instance: np.ndarray  # int32 (H, W), 0 for stuff, 1..N for the visible thing instances (a sequence: track ids)

    def panoptic(self, label_divisor: int = DEFAULT_LABEL_DIVISOR) -> np.ndarray:
        """Pipeline-style id map int32: class * label_divisor + instance (instance 0 for stuff)."""
        if self.instance.max(initial=0) >= label_divisor:
            raise ValueError(f"{self.instance.max()} instances do not fit label_divisor {label_divisor}")
        return self.semantic.astype(np.int32) * label_divisor + self.instance


def generate_scene(seed: int, height: int, width: int) -> SyntheticScene:
    """The street scene of `seed` at height x width pixels (same seed and size: identical arrays)."""
    _check_scene(seed, height, width)
    rng = np.random.default_rng(seed)
    camera = _Camera.sample(rng, height, width)
    canvas = _Canvas(height, width)
    street = _Street.sample(rng)
    street.draw_background(canvas, camera, rng)
    objects = street.sample_objects(rng, camera)
    _draw_far_to_near(canvas, camera, [o.shape for o in objects])
    return canvas.render(rng, camera, street.shadow)


def _check_scene(seed: int, height: int, width: int) -> None:
    if height < 16 or width < 16:
        raise ValueError(f"scene size must be at least 16x16 pixels, got {height}x{width}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")


def _draw_far_to_near(canvas: _Canvas, camera: _Camera, shapes: list) -> None:
    # Painter's order, far to near; the sort is stable, so equal depths keep sampling order.
    for shape in sorted(shapes, key=lambda shape: -shape.depth):
        shape.draw(canvas, camera)


# ---------------------------------------------------------------------------------------------
# Sequences: one street, the camera driving along it, things moving


EGO_SPEED = (4.0, 9.0)  # m/s, the camera's car
_MOTION_STREAM = 1  # motion draws come from their own random stream, so frame 0 is the street of generate_scene
_END_CLEARANCE = MAX_THING_DISTANCE + 10.0  # the camera stops this far before a building closing the street


def generate_sequence(seed: int, frames: int, height: int, width: int, fps: float = 10.0) -> Iterator[SyntheticScene]:
    """`frames` frames, `fps` per second, of the street of `seed`: the camera drives forward along it, cars
    drive, people walk along the sidewalks or cross, cyclists ride across; things enter (from far ahead, from
    the sides), leave (behind the camera, off the street) and occlude each other. Each frame's `instance` holds
    track ids: the same object has the same id in every frame it is visible in (ids 1..M over the sequence).
    Same arguments, same frames; frame i does not depend on the frames before it."""
    _check_scene(seed, height, width)
    if frames <= 0:
        raise ValueError(f"a sequence needs at least one frame, got {frames}")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    for index in range(frames):
        yield _sequence_frame(seed, index, frames, height, width, fps)


def _sequence_frame(seed: int, index: int, frames: int, height: int, width: int, fps: float) -> SyntheticScene:
    # The street is re-drawn from its seed for every frame (the world never changes), seen from where the
    # camera is now, with every moving thing where it is now.
    rng = np.random.default_rng(seed)
    motion = np.random.default_rng([seed, _MOTION_STREAM])
    camera = _Camera.sample(rng, height, width)
    street = _Street.sample(rng)
    speed = motion.uniform(*EGO_SPEED)
    stop = max(street.far - _END_CLEARANCE, 0.0)
    t = index / fps
    moved_camera = dataclasses.replace(camera, z=min(speed * t, stop))
    canvas = _Canvas(height, width)
    street.draw_background(canvas, moved_camera, rng)
    objects = street.sample_objects(rng, camera)
    objects += _objects_ahead(street, camera, motion, travel=min(speed * (frames - 1) / fps, stop),
                              first_group=len({o.group for o in objects}))
    near, _ = street.thing_range(camera)
    lo, hi = sorted((street.facade_x(0), street.facade_x(1)))
    shapes, track = [], 0
    velocity: dict[int, tuple[float, float]] = {}
    for obj in objects:
        if obj.group not in velocity:
            velocity[obj.group] = _group_velocity(obj, [o.shape for o in objects if o.group == obj.group], speed,
                                                  motion.random(2))
        shape = obj.shape
        if not isinstance(shape, _TreeShape):
            track += 1
            shape = dataclasses.replace(shape, track=track)
        vx, vz = velocity[obj.group]
        if vx or vz:
            shape = shape.moved(vx * t, vz * t)
            if not lo < shape.x < hi:  # walked or rode off the street
                continue
        if shape.depth - moved_camera.z >= 0.8 * near:  # nearer than scenes place things: it has left the view
            shapes.append(shape)
    _draw_far_to_near(canvas, moved_camera, shapes)
    return canvas.render(rng, moved_camera, street.shadow, renumber=False)


def _objects_ahead(street: _Street, camera: _Camera, motion: np.random.Generator, travel: float,
                   first_group: int) -> list[_Object]:
    """Things beyond the first scene's range, for as far as the camera will drive: blocks of the same street's
    objects placed one after the other (no trees: the first scene has them as far as they go)."""
    near, far = street.thing_range(camera)
    length = far - near
    objects: list[_Object] = []
    for block in range(1, math.ceil(travel / length) + 1):
        sampled = street.sample_objects(motion, camera)
        objects += [_Object(o.shape.moved(0.0, block * length), o.role, first_group + o.group) for o in sampled
                    if not isinstance(o.shape, _TreeShape) and o.shape.depth + block * length < street.end - 8.0]
        first_group += len(sampled)  # at least as many as its groups: group numbers stay distinct
    return objects


def _group_velocity(obj: _Object, shapes: list, ego_speed: float, u: np.ndarray) -> tuple[float, float]:
    """(vx, vz) in m/s of a group, from two uniform draws `u` (always two: the stream stays aligned)."""
    sign = 1.0 if u[1] < 0.5 else -1.0
    if obj.role == WALKING:
        return 0.0, sign * (0.8 + 0.8 * u[0])
    if obj.role == CROSSING:
        return sign * (0.9 + 0.7 * u[0]), 0.0
    if obj.role == RIDING:
        facing = next(s.facing for s in shapes if isinstance(s, _BicycleShape))
        return facing * (2.5 + 2.5 * u[0]), 0.0
    if obj.role == DRIVING:
        car = obj.shape
        if car.x_left < 1.1 and car.x_left + car.width > -1.1:  # in the camera's lane: drives ahead of it
            return 0.0, ego_speed + 0.5 + 2.0 * u[0]
        return 0.0, -(6.0 + 6.0 * u[0]) if car.oncoming else 3.0 + 9.0 * u[0]
    return 0.0, 0.0


# ---------------------------------------------------------------------------------------------
# Camera and canvas


@dataclass(frozen=True)
class _Camera:
    """Pinhole camera at height CAMERA_HEIGHT looking along +Z, with a small roll, at Z = z (it drives along
    the street in a sequence; a single scene has it at 0)."""

    height: int
    width: int
    focal: float
    cx: float  # principal point = vanishing point of the street
    cy: float
    cos: float
    sin: float
    z: float = 0.0

    @classmethod
    def sample(cls, rng: np.random.Generator, height: int, width: int) -> _Camera:
        roll = math.radians(rng.uniform(-2.5, 2.5))
        return cls(height, width, focal=width * rng.uniform(0.65, 0.95), cx=width * rng.uniform(0.4, 0.6),
                   cy=height * rng.uniform(0.36, 0.5), cos=math.cos(roll), sin=math.sin(roll))

    def project(self, points: np.ndarray) -> np.ndarray:
        """Pixel (x, y) of world points (..., 3): X right, Y up from the road, Z forward (metres)."""
        points = np.asarray(points, dtype=np.float64)
        z = np.maximum(points[..., 2] - self.z, 0.05)
        u = self.focal * points[..., 0] / z
        v = self.focal * (CAMERA_HEIGHT - points[..., 1]) / z
        return np.stack([self.cx + self.cos * u - self.sin * v, self.cy + self.sin * u + self.cos * v], axis=-1)

    def scale(self, z: float) -> float:
        """Pixels per metre at world Z = z."""
        return self.focal / (z - self.z)

    @property
    def nearest_ground(self) -> float:
        """Depth of the ground at the image's bottom row."""
        return self.focal * CAMERA_HEIGHT / max(self.height - self.cy, 1.0)


class _Canvas:
    """Paints part ids; a part is (colour, texture kind, class, instance)."""

    def __init__(self, height: int, width: int) -> None:
        self.parts = np.zeros((height, width), dtype=np.uint16)
        self.colours: list[tuple[float, float, float]] = []
        self.textures: list[int] = []
        self.classes: list[int] = []
        self.instances: list[int] = []
        self.is_ground: list[bool] = []
        self.num_instances = 0

    def part(self, colour, texture: str, class_id: int, instance: int = 0) -> int:
        if len(self.colours) >= np.iinfo(np.uint16).max:
            raise RuntimeError("scene has too many parts")
        self.colours.append(tuple(float(c) for c in colour))
        self.textures.append(_TEXTURE_KINDS.index(texture))
        self.classes.append(class_id)
        self.instances.append(instance)
        self.is_ground.append(class_id in (ROAD, SIDEWALK))
        return len(self.colours) - 1

    def new_instance(self, track: int = 0) -> int:
        """A new instance number; a sequence's things bring their track id instead."""
        if track:
            return track
        self.num_instances += 1
        return self.num_instances

    def fill(self, part: int, polygons_px, disjoint: bool = False) -> None:
        """Fill pixel polygons: an (N, K, 2) array or a list of (K, 2) arrays.

        fillPoly fills several polygons by the even-odd rule, which would leave overlaps empty; so
        polygons that may overlap are filled one call each, `disjoint` ones in a single call.
        """
        polygons = list(np.round(np.asarray(polygons_px, dtype=np.float64) * (1 << _SHIFT)).astype(np.int32))
        for batch in [polygons] if disjoint else [[p] for p in polygons]:
            cv2.fillPoly(self.parts, batch, part, lineType=cv2.LINE_8, shift=_SHIFT)

    def fill3d(self, part: int, camera: _Camera, polygons, disjoint: bool = False) -> None:
        """Fill world polygons (N, K, 3)."""
        points = np.asarray(polygons, dtype=np.float64).reshape(-1, len(polygons[0]), 3)
        self.fill(part, camera.project(points), disjoint)

    def line(self, part: int, p0, p1, thickness: int) -> None:
        a = tuple(int(round(v * (1 << _SHIFT))) for v in p0)
        b = tuple(int(round(v * (1 << _SHIFT))) for v in p1)
        cv2.line(self.parts, a, b, part, thickness=max(1, thickness), lineType=cv2.LINE_8, shift=_SHIFT)

    def disc(self, part: int, centre, radius: float, thickness: int = -1) -> None:
        c = tuple(int(round(v * (1 << _SHIFT))) for v in centre)
        cv2.circle(self.parts, c, int(round(radius * (1 << _SHIFT))), part, thickness=thickness,
                   lineType=cv2.LINE_8, shift=_SHIFT)

    def render(self, rng: np.random.Generator, camera: _Camera, shadow: _Shadow | None,
               renumber: bool = True) -> SyntheticScene:
        """The image and ground truth; instances renumbered 1..N over the visible ones, or (sequences) kept."""
        height, width = self.parts.shape
        parts = self.parts
        colours = np.asarray(self.colours, dtype=np.float32)
        textures = _TEXTURE_TABLE[np.asarray(self.textures)]
        instances = np.asarray(self.instances, dtype=np.int32)
        if renumber:  # 1..N in drawing order over the visible ones; hidden ones vanish
            visible = np.zeros(instances.max(initial=0) + 1, dtype=bool)
            visible[instances[np.bincount(parts.ravel(), minlength=len(instances)) > 0]] = True
            visible[0] = False
            numbers = np.zeros(visible.size, dtype=np.int32)
            numbers[visible] = np.arange(1, visible.sum() + 1, dtype=np.int32)
            instances = numbers[instances]
        instance = np.take(instances, parts)
        semantic = np.take(np.asarray(self.classes, dtype=np.uint8), parts)

        fine, medium, coarse = _noise_fields(rng, height, width)
        ramp = _ramps(height, width)
        shade = 1.0 + (np.take(textures[:, 0], parts) * fine + np.take(textures[:, 1], parts) * medium
                       + np.take(textures[:, 2], parts) * coarse + np.take(textures[:, 3], parts) * ramp[0])
        # Lighting: exposure, a horizontal light gradient, vignetting and shadows cast on the ground.
        light = rng.uniform(0.6, 1.3) * (1.0 + rng.uniform(-0.3, 0.3) * ramp[1] - rng.uniform(0.0, 0.5) * ramp[2])
        if shadow is not None:
            mask = np.zeros((height, width), dtype=np.uint8)
            cv2.fillPoly(mask, [np.round(camera.project(shadow.polygon) * (1 << _SHIFT)).astype(np.int32)], 1,
                         shift=_SHIFT)
            ground = np.take(np.asarray(self.is_ground), parts)
            light = light * np.where((mask > 0) & ground, shadow.darkness, np.float32(1.0))
        tint = rng.uniform(0.88, 1.12, size=3).astype(np.float32)
        image = np.take(colours, parts, axis=0) * (shade * light)[..., None] * tint
        image += _noise_cut(rng, height, width) * rng.uniform(1.5, 7.0)  # sensor noise
        image = np.clip(image, 0, 255).astype(np.uint8)
        if rng.random() < 0.5:
            image = cv2.GaussianBlur(image, (3, 3), rng.uniform(0.4, 1.0))
        return SyntheticScene(image=image, semantic=semantic, instance=instance)


@functools.lru_cache(maxsize=4)
def _noise_bank(height: int, width: int) -> np.ndarray:
    """Fixed white noise (H + margin, W + margin, 3), cut at random offsets: far cheaper than fresh noise."""
    bank = np.random.default_rng(12345).standard_normal((height + _NOISE_MARGIN, width + _NOISE_MARGIN, 3),
                                                        dtype=np.float32)
    bank.flags.writeable = False
    return bank


def _noise_cut(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    y, x = rng.integers(0, _NOISE_MARGIN, size=2)
    return _noise_bank(height, width)[y:y + height, x:x + width]


def _noise_fields(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fine (per pixel), medium (~4 px) and coarse (~1/16 of the height) zero-mean texture noise."""
    fine = _noise_cut(rng, height, width)[..., int(rng.integers(0, 3))]
    medium = cv2.resize(rng.standard_normal((max(height // 4, 2), max(width // 4, 2)), dtype=np.float32),
                        (width, height), interpolation=cv2.INTER_LINEAR)
    cells = max(height // 16, 2)
    coarse = cv2.resize(rng.standard_normal((cells, max(cells * width // height, 2)), dtype=np.float32),
                        (width, height), interpolation=cv2.INTER_CUBIC)
    return fine, medium, coarse


@functools.lru_cache(maxsize=4)
def _ramps(height: int, width: int) -> np.ndarray:
    """Vertical ramp (-0.5 top .. 0.5 bottom), horizontal ramp, squared radius from the centre."""
    y = np.linspace(-0.5, 0.5, height, dtype=np.float32)[:, None]
    x = np.linspace(-0.5, 0.5, width, dtype=np.float32)[None, :]
    ramps = np.stack(np.broadcast_arrays(y, x, (2 * x) ** 2 + (2 * y) ** 2)).astype(np.float32)
    ramps.flags.writeable = False
    return ramps


def _jitter(rng: np.random.Generator, colour, amount: float) -> tuple[float, ...]:
    return tuple(min(max(float(c + d), 0.0), 255.0) for c, d in zip(colour, rng.uniform(-amount, amount, 3),
                                                                    strict=True))


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(max(high, low * 1.01)))))


# ---------------------------------------------------------------------------------------------
# The street: ground, facades, sky, and where things go


@dataclass
class _Shadow:
    polygon: np.ndarray  # (K, 3) world polygon on the ground
    darkness: float
    x_range: tuple[float, float]
    z_range: tuple[float, float]

    def factor(self, x: float, z: float) -> float:
        inside = self.x_range[0] <= x <= self.x_range[1] and self.z_range[0] <= z <= self.z_range[1]
        return self.darkness if inside else 1.0


@dataclass
class _Street:
    centre: float  # road centre X
    road_half: float
    sidewalks: tuple[float, float]  # widths left, right
    park: tuple[bool, bool]  # a park's tree line instead of facades, left / right
    end: float  # depth of the building closing the street, or inf
    parked: tuple[bool, bool]  # rows of parked cars, left / right
    shadow: _Shadow | None

    @classmethod
    def sample(cls, rng: np.random.Generator) -> _Street:
        road_half = rng.uniform(3.5, 8.0)
        centre = rng.uniform(-0.5, 0.5) * road_half
        sidewalks = (rng.uniform(2.0, 5.5), rng.uniform(2.0, 5.5))
        park = (rng.random() < 0.25, rng.random() < 0.25)
        end = rng.uniform(70.0, 160.0) if rng.random() < 0.5 else math.inf
        parked = (rng.random() < 0.65, rng.random() < 0.65)
        street = cls(centre, road_half, sidewalks, park, end, parked, None)
        if rng.random() < 0.55:
            side = int(rng.integers(2))
            outer = street.facade_x(side)
            inner = outer + (1 if side == 0 else -1) * rng.uniform(2.0, 2 * road_half + sidewalks[side])
            z0 = rng.uniform(1.0, 20.0)
            z1 = min(z0 + rng.uniform(10.0, 80.0), street.far)
            polygon = np.array([[outer, 0, z0], [inner, 0, z0], [inner, 0, z1], [outer, 0, z1]])
            street.shadow = _Shadow(polygon, rng.uniform(0.45, 0.75), (min(outer, inner), max(outer, inner)), (z0, z1))
        return street

    @property
    def far(self) -> float:
        return min(self.end, 400.0)

    def curb_x(self, side: int) -> float:
        return self.centre + (-1 if side == 0 else 1) * self.road_half

    def facade_x(self, side: int) -> float:
        return self.curb_x(side) + (-1 if side == 0 else 1) * self.sidewalks[side]

    def sidewalk_x(self, side: int, rng: np.random.Generator, margin: float = 0.3) -> float:
        """A random X on the sidewalk of `side`, at least `margin` from its edges."""
        lo, hi = sorted((self.curb_x(side), self.facade_x(side)))
        return rng.uniform(lo + margin, max(hi - margin, lo + margin))

    def shade(self, x: float, z: float) -> float:
        return self.shadow.factor(x, z) if self.shadow is not None else 1.0

    # --- background -------------------------------------------------------------------------

    def draw_background(self, canvas: _Canvas, camera: _Camera, rng: np.random.Generator) -> None:
        clear = rng.random() < 0.6
        sky = (rng.uniform(95, 150), rng.uniform(150, 195), rng.uniform(215, 250)) if clear else \
            _jitter(rng, (200, 205, 212), 20)
        sky_part = canvas.part(sky, "sky", SKY)  # part 0: every unpainted pixel is sky
        assert sky_part == 0
        for _ in range(int(rng.integers(0, 5))):
            cloud = canvas.part(_jitter(rng, (236, 238, 242), 10), "cloud", SKY)
            centre = (rng.uniform(0, camera.width), rng.uniform(0, camera.cy))
            axes = (rng.uniform(0.05, 0.25) * camera.width, rng.uniform(0.02, 0.06) * camera.height)
            canvas.fill(cloud, [cv2.ellipse2Poly(tuple(int(c) for c in centre), tuple(int(a) + 1 for a in axes),
                                                 0, 0, 360, 20)])
        if math.isfinite(self.end):
            self._draw_facade(canvas, camera, rng, x0=self.facade_x(0) - 30, x1=self.facade_x(1) + 30, z0=self.end,
                              z1=self.end, height=rng.uniform(8, 25), across=True)
        for side in (0, 1):
            if self.park[side]:
                self._draw_park(canvas, camera, rng, side)
            else:
                z = rng.uniform(-8.0, 1.0)
                while z < self.far:
                    length = rng.uniform(8.0, 30.0) * max(1.0, z / 40.0)  # far facades are few pixels wide
                    if rng.random() > 0.1:  # a gap now and then shows the sky behind
                        x = self.facade_x(side) + (-1 if side == 0 else 1) * rng.uniform(0, 1.5)
                        self._draw_facade(canvas, camera, rng, x, x, max(z, 0.5), min(z + length, self.far),
                                          rng.uniform(7.0, 28.0), across=False)
                    z += length
        self._draw_ground(canvas, camera, rng)

    def _draw_facade(self, canvas: _Canvas, camera: _Camera, rng: np.random.Generator, x0: float, x1: float,
                     z0: float, z1: float, height: float, across: bool) -> None:
        """A facade: the plane X = x0 from z0 to z1 (along the street), or Z = z0 from x0 to x1 (across)."""
        wall = canvas.part(_jitter(rng, _pick(rng, _FACADE_COLOURS), 15), "facade", BUILDING)
        corners = [[x0, 0, z0], [x1, 0, z1], [x1, height, z1], [x0, height, z0]]
        canvas.fill3d(wall, camera, [corners])
        # Windows: a grid of dark quads in the facade plane, floor by floor.
        floor_height = rng.uniform(2.8, 3.6)
        spacing = rng.uniform(2.2, 4.0)
        win_w, win_h = rng.uniform(0.8, 1.6), rng.uniform(1.1, 1.8)
        start, stop = (x0, x1) if across else (z0, z1)
        along = np.arange(start + spacing / 2, stop - win_w, spacing)
        floors = np.arange(rng.uniform(3.0, 4.0), height - win_h - 0.3, floor_height)
        if along.size == 0 or floors.size == 0:
            return
        if not across:  # windows narrower than ~1 px at their distance would only alias; the distance is taken
            # from Z = 0, so that random draws, and with them the world, are the same wherever the camera is
            along = along[camera.focal * win_w / along > 1.0]
        a, f = (g.ravel() for g in np.meshgrid(along, floors))
        if a.size == 0:
            return
        glass = canvas.part(_jitter(rng, (55, 65, 80) if rng.random() < 0.7 else (150, 170, 190), 20), "glass",
                            BUILDING)
        quad_a = np.stack([a, a + win_w, a + win_w, a], axis=1)
        quad_y = np.stack([f, f, f + win_h, f + win_h], axis=1)
        fixed = np.full_like(quad_a, x0 if not across else z0)
        quads = np.stack([quad_a, quad_y, fixed] if across else [fixed, quad_y, quad_a], axis=-1)
        canvas.fill3d(glass, camera, quads, disjoint=True)
        if rng.random() < 0.5:  # shop fronts on the ground floor
            shop = canvas.part(_jitter(rng, (40, 45, 55), 15), "glass", BUILDING)
            band = np.array([[start, 0.3], [stop, 0.3], [stop, 2.6], [start, 2.6]])
            fixed = np.full(4, x0 if not across else z0)
            points = np.stack([band[:, 0], band[:, 1], fixed] if across else [fixed, band[:, 1], band[:, 0]], 1)
            canvas.fill3d(shop, camera, [points])

    def _draw_park(self, canvas: _Canvas, camera: _Camera, rng: np.random.Generator, side: int) -> None:
        """A tree line with a wavy top along the sidewalk's outer edge, grass in front."""
        x = self.facade_x(side)
        z = np.concatenate([[0.5], np.arange(2.0, self.far, 4.0), [self.far]])
        tops = np.clip(rng.uniform(5.0, 12.0) + np.cumsum(rng.normal(0, 1.2, z.size)), 3.0, 18.0)
        outline = np.concatenate([np.stack([np.full_like(z, x), np.zeros_like(z), z], 1),
                                  np.stack([np.full_like(z, x), tops, z], 1)[::-1]])
        green = canvas.part(_jitter(rng, (70, 110, 45), 18), "foliage", VEGETATION)
        canvas.fill3d(green, camera, [outline])

    def _draw_ground(self, canvas: _Canvas, camera: _Camera, rng: np.random.Generator) -> None:
        far = self.far
        paving = _jitter(rng, (175, 165, 160) if rng.random() < 0.6 else (190, 170, 165), 15)
        sidewalk = canvas.part(paving, "paving", SIDEWALK)
        # Paving everywhere first: gaps between buildings show ground up to the horizon.
        canvas.fill3d(sidewalk, camera, [[[-200, 0, 0.5], [200, 0, 0.5], [200, 0, far], [-200, 0, far]]])
        for side in (0, 1):
            if self.park[side]:  # grass between sidewalk and tree line
                grass = canvas.part(_jitter(rng, (95, 135, 55), 15), "foliage", VEGETATION)
                outer = self.facade_x(side)
                inner = outer + (1 if side == 0 else -1) * min(rng.uniform(0.5, 2.0), self.sidewalks[side] - 1.0)
                canvas.fill3d(grass, camera, [[[outer, 0, 0.5], [inner, 0, 0.5], [inner, 0, far], [outer, 0, far]]])
        self._draw_paving_joints(canvas, camera, rng, sidewalk)
        asphalt = canvas.part(_jitter(rng, (92, 92, 96), 18), "asphalt", ROAD)
        lo, hi = self.curb_x(0), self.curb_x(1)
        canvas.fill3d(asphalt, camera, [[[lo, 0, 0.5], [hi, 0, 0.5], [hi, 0, far], [lo, 0, far]]])
        curb = canvas.part(_jitter(rng, (200, 198, 195), 10), "paving", SIDEWALK)
        for x in (lo, hi):
            sign = -1 if x == lo else 1
            canvas.fill3d(curb, camera, [[[x, 0, 0.5], [x + sign * 0.2, 0, 0.5], [x + sign * 0.2, 0, far],
                                          [x, 0, far]]])
        self._draw_markings(canvas, camera, rng)

    def _draw_paving_joints(self, canvas: _Canvas, camera: _Camera, rng: np.random.Generator, sidewalk: int) -> None:
        """Joints between paving slabs, only where they are at least 3 px apart (no aliasing)."""
        tile = rng.uniform(0.6, 1.5)
        z_max = min(camera.z + math.sqrt(camera.focal * CAMERA_HEIGHT * tile / 3.0), self.far)
        z = np.arange(math.ceil((camera.z + camera.nearest_ground * 0.8) / tile) * tile, z_max, tile)
        if z.size == 0:
            return
        joint = canvas.part(tuple(c * 0.8 for c in canvas.colours[sidewalk]), "paving", SIDEWALK)
        for side in (0, 1):
            a, b = self.curb_x(side), self.facade_x(side)
            ends = camera.project(np.stack([np.stack([np.full_like(z, a), 0 * z, z], 1),
                                            np.stack([np.full_like(z, b), 0 * z, z], 1)], 1))
            cv2.polylines(canvas.parts, list(np.round(ends * (1 << _SHIFT)).astype(np.int32)), False, joint,
                          thickness=1, shift=_SHIFT)

    def _draw_markings(self, canvas: _Canvas, camera: _Camera, rng: np.random.Generator) -> None:
        """Lane lines (dashed or solid) and, sometimes, a zebra crossing; all of class road."""
        paint = canvas.part(_jitter(rng, (225, 225, 215) if rng.random() < 0.8 else (225, 195, 60), 12), "marking",
                            ROAD)
        lanes = max(int(2 * self.road_half // 3.3), 1)
        quads = []
        dash, gap = rng.uniform(2.0, 4.0), rng.uniform(3.0, 8.0)
        for k in range(1, lanes):
            x = self.curb_x(0) + k * 2 * self.road_half / lanes
            solid = k == lanes // 2 and rng.random() < 0.3
            starts = np.array([0.5]) if solid else np.arange(rng.uniform(0, dash + gap), self.far, dash + gap)
            ends = np.full_like(starts, self.far) if solid else starts + dash
            for z0, z1 in zip(starts, ends, strict=True):
                quads.append([[x - 0.07, 0, z0], [x + 0.07, 0, z0], [x + 0.07, 0, z1], [x - 0.07, 0, z1]])
        if rng.random() < 0.3:
            z0 = rng.uniform(max(camera.nearest_ground, 5.0), 25.0)
            for x in np.arange(self.curb_x(0) + 0.5, self.curb_x(1) - 0.5, 1.0):
                quads.append([[x, 0, z0], [x + 0.5, 0, z0], [x + 0.5, 0, z0 + 3.0], [x, 0, z0 + 3.0]])
        if quads:
            canvas.fill3d(paint, camera, quads, disjoint=True)

    # --- objects ----------------------------------------------------------------------------

    def sample_objects(self, rng: np.random.Generator, camera: _Camera) -> list[_Object]:
        """Every tree, car, person and bicycle of the scene, in groups that move together in a sequence."""
        near, far = self.thing_range(camera)
        groups: list[tuple[str, list]] = []
        for side in (0, 1):
            if rng.random() < 0.5:
                groups.append((STATIC, self._trees(rng, side, near)))
            if self.parked[side]:
                groups.append((STATIC, self._parked_row(rng, side, near, far)))
            for _ in range(int(rng.integers(0, 5))):
                groups.append((WALKING, self._people_group(rng, side, near, far)))
            if rng.random() < 0.35 and self.sidewalks[side] > 2.2:
                groups.append((STATIC, self._bicycle_rack(rng, side, near, far)))
        groups += [(DRIVING, [car]) for car in self._traffic(rng, near, far)]
        for _ in range(int(rng.integers(0, 3)) if rng.random() < 0.4 else 0):  # pedestrians crossing
            x = rng.uniform(self.curb_x(0) + 0.5, self.curb_x(1) - 0.5)
            groups.append((CROSSING, [self._person(rng, x, _log_uniform(rng, near, min(far, 30.0)))]))
        if rng.random() < 0.35:
            groups.append((RIDING, self._cyclist(rng, near, far)))
        return [_Object(shape, role, group) for group, (role, shapes) in enumerate(groups) for shape in shapes]

    def thing_range(self, camera: _Camera) -> tuple[float, float]:
        """Nearest and farthest depth (from the camera) at which things are placed."""
        return max(camera.nearest_ground * 0.7, 2.0), min(MAX_THING_DISTANCE, self.end - 8.0)

    def _trees(self, rng: np.random.Generator, side: int, near: float) -> list[_TreeShape]:
        x = self.curb_x(side) + (-1 if side == 0 else 1) * min(0.7, self.sidewalks[side] / 2)
        spacing = rng.uniform(8.0, 15.0)
        bark = _jitter(rng, (90, 70, 50), 15)
        leaves = _jitter(rng, (60, 105, 40), 20)
        trees = []
        for z in np.arange(rng.uniform(near, near + spacing), min(self.far, 120.0), spacing):
            crown = (rng.uniform(1.4, 2.8), rng.uniform(1.6, 3.2), rng.uniform(3.5, 6.0))
            trees.append(_TreeShape(float(x), float(z), crown, bark, leaves, rng.uniform(-1, 1, size=(3, 3))))
        return trees

    def _car(self, rng: np.random.Generator, z: float, oncoming: bool, x_left: float | None = None,
             parked_side: int | None = None) -> _CarShape:
        """A car at depth z: at x_left, or parked along the curb of `parked_side`."""
        length, width = rng.uniform(3.8, 4.9), rng.uniform(1.7, 1.95)
        if parked_side is not None:
            offset = rng.uniform(0.2, 0.5)
            x_left = self.curb_x(parked_side) + (offset if parked_side == 0 else -offset - width)
        tall = rng.random() < 0.2  # vans and SUVs
        height = rng.uniform(1.75, 2.0) if tall else rng.uniform(1.38, 1.6)
        colour = np.array(_jitter(rng, _pick(rng, _CAR_COLOURS), 12)) * self.shade(x_left + width / 2, z)
        return _CarShape(x_left, z, length, width, height, tall, tuple(colour), oncoming)

    def _parked_row(self, rng: np.random.Generator, side: int, near: float, far: float) -> list[_CarShape]:
        objects = []
        z = _log_uniform(rng, near, 15.0)
        while z < far and len(objects) < 7:
            objects.append(self._car(rng, z, oncoming=False, parked_side=side))
            gap = rng.uniform(5.0, 15.0) if rng.random() < 0.15 else rng.uniform(0.3, 2.5)
            z += 4.9 + gap
        return objects

    def _traffic(self, rng: np.random.Generator, near: float, far: float) -> list[_CarShape]:
        objects, taken = [], []
        lo = self.curb_x(0) + (2.3 if self.parked[0] else 0.3)
        hi = self.curb_x(1) - (2.3 if self.parked[1] else 0.3)
        for _ in range(int(rng.integers(0, 4))):
            if hi - lo < 2.0:
                break
            x = rng.uniform(lo, hi - 1.9)
            z = _log_uniform(rng, max(near, 5.0), far)
            if any(abs(x - tx) < 2.2 and abs(z - tz) < 6.0 for tx, tz in taken):
                continue
            taken.append((x, z))
            objects.append(self._car(rng, z, oncoming=x + 0.9 < self.centre, x_left=x))
        return objects

    def _people_group(self, rng: np.random.Generator, side: int, near: float, far: float) -> list[_PersonShape]:
        x0 = self.sidewalk_x(side, rng)
        z0 = _log_uniform(rng, near, far)
        lo, hi = sorted((self.curb_x(side), self.facade_x(side)))
        return [self._person(rng, float(np.clip(x0 + rng.uniform(-0.7, 0.7), lo + 0.25, hi - 0.25)),
                             max(z0 + rng.uniform(-0.8, 0.8), near))
                for _ in range(int(rng.choice([1, 1, 2, 2, 3, 4])))]

    def _person_look(self, rng: np.random.Generator, x: float, z: float, height: float) -> _PersonLook:
        shade = self.shade(x, z)
        def cloth() -> tuple:
            return tuple(np.array(rng.uniform(20, 230, size=3)) * shade)
        return _PersonLook(height, tuple(np.array(_pick(rng, _SKIN_COLOURS)) * shade), cloth(), cloth(),
                           tuple(np.array(_jitter(rng, (40, 30, 25), 20)) * shade))

    def _person(self, rng: np.random.Generator, x: float, z: float) -> _PersonShape:
        height = rng.uniform(1.05, 1.35) if rng.random() < 0.12 else rng.uniform(1.55, 1.95)
        look = self._person_look(rng, x, z, height)
        stride = rng.uniform(0.0, 0.28) * height
        swing = rng.uniform(-0.06, 0.06) * height
        pose = _Pose(x=x, z=z, hip=(x, 0.52 * height), shoulder=(x, 0.81 * height),
                     feet=((x - 0.05 * height - stride / 2, 0.0), (x + 0.05 * height + stride / 2, 0.0)),
                     hands=((x - 0.17 * height - swing, 0.45 * height), (x + 0.17 * height + swing, 0.45 * height)))
        return _PersonShape(look, pose)

    def _bicycle(self, rng: np.random.Generator, x: float, z: float, facing: int) -> _BicycleShape:
        colour = tuple(np.array(rng.uniform(20, 230, size=3)) * self.shade(x, z))
        return _BicycleShape(x, z, facing, rng.uniform(0.31, 0.36), colour)

    def _bicycle_rack(self, rng: np.random.Generator, side: int, near: float, far: float) -> list[_BicycleShape]:
        x = self.sidewalk_x(side, rng, margin=1.0)
        z = _log_uniform(rng, near, min(far, 30.0))
        facing = 1 if rng.random() < 0.5 else -1
        spacing = rng.uniform(0.45, 0.9)
        return [self._bicycle(rng, x + rng.uniform(-0.15, 0.15), z + i * spacing, facing)
                for i in range(int(rng.integers(2, 6)))]

    def _cyclist(self, rng: np.random.Generator, near: float, far: float) -> list:
        x = rng.uniform(self.curb_x(0) + 1.0, self.curb_x(1) - 1.0)
        z = _log_uniform(rng, max(near, 4.0), min(far, 30.0))
        facing = 1 if rng.random() < 0.5 else -1
        bike = self._bicycle(rng, x, z, facing)
        height = rng.uniform(1.6, 1.9)
        look = self._person_look(rng, x, z, height)
        seat, bar, pedal = bike.seat, bike.handlebar, bike.bottom_bracket
        crank = rng.uniform(0, 2 * math.pi)
        feet = tuple((pedal[0] + s * 0.17 * math.cos(crank), pedal[1] + s * 0.17 * math.sin(crank)) for s in (1, -1))
        pose = _Pose(x=x, z=z - 0.05, hip=(seat[0], seat[1] + 0.05),
                     shoulder=(seat[0] + facing * 0.22 * height / 1.75, seat[1] + 0.55 * height / 1.75),
                     feet=feet, hands=(bar, bar))
        return [bike, _PersonShape(look, pose)]


# ---------------------------------------------------------------------------------------------
# Objects


# How a group of objects moves in a sequence.
STATIC, WALKING, DRIVING, CROSSING, RIDING = "static", "walking", "driving", "crossing", "riding"


@dataclass(frozen=True)
class _Object:
    shape: _TreeShape | _CarShape | _PersonShape | _BicycleShape
    role: str  # STATIC, WALKING (along the sidewalk), DRIVING, CROSSING (the road), RIDING (a bicycle across)
    group: int  # objects of one group (a family walking, a cyclist and the bicycle) move together


@dataclass(frozen=True)
class _TreeShape:
    x: float
    z: float
    crown: tuple
    bark: tuple
    leaves: tuple
    blobs: np.ndarray

    @property
    def depth(self) -> float:
        return self.z

    def draw(self, canvas: _Canvas, camera: _Camera) -> None:
        _draw_tree(canvas, camera, self.x, self.z, self.crown, self.bark, self.leaves, self.blobs)


def _draw_tree(canvas: _Canvas, camera: _Camera, x: float, z: float, crown: tuple, bark, leaves,
               blobs: np.ndarray) -> None:
    """A trunk and a crown of three overlapping ellipses, in the plane Z = z (all vegetation)."""
    trunk = canvas.part(bark, "bark", VEGETATION)
    canvas.fill3d(trunk, camera, [[[x - 0.15, 0, z], [x + 0.15, 0, z], [x + 0.12, crown[2], z],
                                   [x - 0.12, crown[2], z]]])
    foliage = canvas.part(leaves, "foliage", VEGETATION)
    angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    rx, ry, cy = crown
    ellipses = []
    for dx, dy, ds in blobs:
        s = 0.75 + 0.2 * ds
        ellipses.append(np.stack([x + 0.45 * rx * dx + s * rx * np.cos(angles),
                                  cy + 0.3 * ry * dy + s * ry * np.sin(angles), np.full_like(angles, z)], 1))
    canvas.fill3d(foliage, camera, ellipses)


def _box_faces(bottom: tuple, top: tuple, y0: float, y1: float) -> dict[str, list]:
    """Visible faces of a (possibly tapered) box whose bottom rectangle (x0, x1, z0, z1) lies at height y0
    and top rectangle at y1, seen from the camera at X = 0, Y = CAMERA_HEIGHT, Z = 0."""
    bx0, bx1, bz0, bz1 = bottom
    tx0, tx1, tz0, tz1 = top
    faces = {"rear": [[bx0, y0, bz0], [bx1, y0, bz0], [tx1, y1, tz0], [tx0, y1, tz0]]}
    if bx1 < 0:
        faces["side"] = [[bx1, y0, bz0], [bx1, y0, bz1], [tx1, y1, tz1], [tx1, y1, tz0]]
    elif bx0 > 0:
        faces["side"] = [[bx0, y0, bz0], [bx0, y0, bz1], [tx0, y1, tz1], [tx0, y1, tz0]]
    if y1 < CAMERA_HEIGHT:
        faces["top"] = [[tx0, y1, tz0], [tx1, y1, tz0], [tx1, y1, tz1], [tx0, y1, tz1]]
    return faces


@dataclass
class _CarShape:
    x_left: float
    z: float
    length: float
    width: float
    height: float
    tall: bool
    colour: tuple
    oncoming: bool
    track: int = 0  # a sequence's track id

    @property
    def depth(self) -> float:
        return self.z

    @property
    def x(self) -> float:
        return self.x_left + self.width / 2

    def moved(self, dx: float, dz: float) -> _CarShape:
        return dataclasses.replace(self, x_left=self.x_left + dx, z=self.z + dz)

    def draw(self, canvas: _Canvas, camera: _Camera) -> None:
        """Body box, cabin (tapered box of glass with a painted roof), wheels, lights and plate."""
        instance = canvas.new_instance(self.track)
        x0, x1, z0, z1 = self.x_left, self.x_left + self.width, self.z, self.z + self.length
        paint = np.array(self.colour)

        def part(colour, texture: str = "paint") -> int:
            return canvas.part(np.clip(colour, 0, 255), texture, CAR, instance)

        rubber = part((22, 22, 24), "rubber")
        # Wheels under the rear and on the visible side, drawn first so the body covers their top.
        stubs = [[[a, 0, z0 + 0.5], [b, 0, z0 + 0.5], [b, 0.32, z0 + 0.5], [a, 0.32, z0 + 0.5]]
                 for a, b in ((x0 + 0.08, x0 + 0.35), (x1 - 0.35, x1 - 0.08))]
        canvas.fill3d(rubber, camera, stubs, disjoint=True)
        side_x = x1 if x1 < 0 else x0 if x0 > 0 else None
        if side_x is not None:
            angles = np.linspace(0, 2 * np.pi, 14, endpoint=False)
            wheels = [np.stack([np.full_like(angles, side_x), 0.33 + 0.33 * np.sin(angles),
                                zc + 0.33 * np.cos(angles)], 1) for zc in (z0 + 0.8, z1 - 0.8)]
            canvas.fill3d(rubber, camera, wheels, disjoint=True)
        body_top = 0.95 if not self.tall else 1.05
        body = _box_faces((x0, x1, z0, z1), (x0, x1, z0, z1), 0.25, body_top)
        shades = {"rear": 0.92, "side": 0.78, "top": 1.08}
        for name, face in body.items():
            canvas.fill3d(part(paint * shades[name]), camera, [face])
        # Cabin: the windscreens lean in, the roof is shorter than the cabin's base.
        inset = 0.1 * self.width
        base = (x0 + inset, x1 - inset, z0 + (0.1 if self.tall else 0.22) * self.length, z1 - 0.15 * self.length)
        roof = (x0 + 1.5 * inset, x1 - 1.5 * inset, base[2] + (0.05 if self.tall else 0.12) * self.length,
                base[3] - 0.15 * self.length)
        glass = part((45, 55, 65), "glass")
        cabin = _box_faces(base, roof, body_top, self.height)
        for name, face in cabin.items():
            canvas.fill3d(part(paint) if name == "top" else glass, camera, [face])
        # Rear (or front) details: bumper, two lights, plate.
        bumper = [[[x0, 0.25, z0], [x1, 0.25, z0], [x1, 0.42, z0], [x0, 0.42, z0]]]
        canvas.fill3d(part(paint * 0.45), camera, bumper)
        light_colour = (235, 230, 200) if self.oncoming else (200, 20, 20)
        lights = [[[a, 0.62, z0], [b, 0.62, z0], [b, 0.78, z0], [a, 0.78, z0]]
                  for a, b in ((x0 + 0.08, x0 + 0.35), (x1 - 0.35, x1 - 0.08))]
        canvas.fill3d(part(light_colour, "metal"), camera, lights, disjoint=True)
        xm = (x0 + x1) / 2
        canvas.fill3d(part((225, 225, 225), "metal"), camera,
                      [[[xm - 0.26, 0.45, z0], [xm + 0.26, 0.45, z0], [xm + 0.26, 0.57, z0], [xm - 0.26, 0.57, z0]]])


@dataclass(frozen=True)
class _PersonLook:
    height: float
    skin: tuple
    shirt: tuple
    trousers: tuple
    hair: tuple


@dataclass(frozen=True)
class _Pose:
    """Key points (X, Y) in metres of a person in the plane Z = z."""

    x: float
    z: float
    hip: tuple
    shoulder: tuple
    feet: tuple
    hands: tuple

    def moved(self, dx: float, dz: float) -> _Pose:
        def shift(point: tuple) -> tuple:
            return point[0] + dx, point[1]
        return _Pose(self.x + dx, self.z + dz, shift(self.hip), shift(self.shoulder),
                     tuple(shift(p) for p in self.feet), tuple(shift(p) for p in self.hands))


@dataclass(frozen=True)
class _PersonShape:
    look: _PersonLook
    pose: _Pose
    track: int = 0

    @property
    def depth(self) -> float:
        return self.pose.z

    @property
    def x(self) -> float:
        return self.pose.x

    def moved(self, dx: float, dz: float) -> _PersonShape:
        return dataclasses.replace(self, pose=self.pose.moved(dx, dz))

    def draw(self, canvas: _Canvas, camera: _Camera) -> None:
        _draw_person(canvas, camera, self.look, self.pose, self.track)


def _limb(a: tuple, b: tuple, width_a: float, width_b: float, z: float) -> list:
    """World quad of a limb from point a to point b (X, Y) with the given widths at each end."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    norm = math.hypot(dx, dy) or 1.0
    nx, ny = -dy / norm, dx / norm
    ax, ay, bx, by = nx * width_a / 2, ny * width_a / 2, nx * width_b / 2, ny * width_b / 2
    return [[a[0] + ax, a[1] + ay, z], [b[0] + bx, b[1] + by, z], [b[0] - bx, b[1] - by, z], [a[0] - ax, a[1] - ay, z]]


def _ellipse(cx: float, cy: float, rx: float, ry: float, z: float, points: int = 12) -> np.ndarray:
    angles = np.linspace(0, 2 * np.pi, points, endpoint=False)
    return np.stack([cx + rx * np.cos(angles), cy + ry * np.sin(angles), np.full_like(angles, z)], 1)


def _draw_person(canvas: _Canvas, camera: _Camera, look: _PersonLook, pose: _Pose, track: int = 0) -> None:
    """Legs, shoes, torso, arms, neck and head in the plane Z = pose.z (class person)."""
    instance = canvas.new_instance(track)
    h, z = look.height, pose.z

    def part(colour, texture: str) -> int:
        return canvas.part(np.clip(colour, 0, 255), texture, PERSON, instance)

    hip_x, hip_y = pose.hip
    sh_x, sh_y = pose.shoulder
    trousers = part(look.trousers, "cloth")
    legs = [_limb((hip_x + s * 0.05 * h, hip_y), foot, 0.09 * h, 0.06 * h, z) for s, foot in zip((-1, 1), pose.feet,
                                                                                                   strict=True)]
    canvas.fill3d(trousers, camera, legs)
    shoes = part((30, 28, 28), "rubber")
    canvas.fill3d(shoes, camera, [_ellipse(fx, fy + 0.015 * h, 0.045 * h, 0.02 * h, z, 8) for fx, fy in pose.feet])
    shirt = part(look.shirt, "cloth")
    torso = [[hip_x - 0.1 * h, hip_y - 0.02 * h, z], [hip_x + 0.1 * h, hip_y - 0.02 * h, z],
             [sh_x + 0.125 * h, sh_y, z], [sh_x + 0.09 * h, sh_y + 0.03 * h, z],
             [sh_x - 0.09 * h, sh_y + 0.03 * h, z], [sh_x - 0.125 * h, sh_y, z]]
    canvas.fill3d(shirt, camera, [torso])
    arms = [_limb((sh_x + s * 0.105 * h, sh_y - 0.01 * h), hand, 0.055 * h, 0.045 * h, z)
            for s, hand in zip((-1, 1), pose.hands, strict=True)]
    canvas.fill3d(shirt, camera, arms)
    skin = part(look.skin, "skin")
    canvas.fill3d(skin, camera, [_ellipse(hx, hy, 0.028 * h, 0.032 * h, z, 8) for hx, hy in pose.hands])
    canvas.fill3d(skin, camera, [_limb((sh_x, sh_y), (sh_x, sh_y + 0.06 * h), 0.05 * h, 0.045 * h, z)])
    canvas.fill3d(part(look.hair, "cloth"), camera, [_ellipse(sh_x, sh_y + 0.125 * h, 0.06 * h, 0.062 * h, z)])
    canvas.fill3d(skin, camera, [_ellipse(sh_x, sh_y + 0.1 * h, 0.05 * h, 0.06 * h, z)])


@dataclass
class _BicycleShape:
    x: float  # centre X
    z: float
    facing: int  # +1: front wheel to the right
    wheel: float  # wheel radius, metres
    colour: tuple
    track: int = 0

    @property
    def depth(self) -> float:
        return self.z

    def moved(self, dx: float, dz: float) -> _BicycleShape:
        return dataclasses.replace(self, x=self.x + dx, z=self.z + dz)

    def point(self, forward: float, up: float) -> tuple[float, float]:
        return self.x + self.facing * forward, up

    @property
    def rear_hub(self) -> tuple:
        return self.point(-0.52, self.wheel)

    @property
    def front_hub(self) -> tuple:
        return self.point(0.53, self.wheel)

    @property
    def bottom_bracket(self) -> tuple:
        return self.point(-0.05, 0.3)

    @property
    def seat(self) -> tuple:
        return self.point(-0.22, 0.88)

    @property
    def handlebar(self) -> tuple:
        return self.point(0.4, 0.98)

    def draw(self, canvas: _Canvas, camera: _Camera) -> None:
        """Side view in the plane Z = z: wheels (tyre, spokes, hub), frame, saddle, handlebar."""
        instance = canvas.new_instance(self.track)
        z = self.z
        scale = camera.scale(z)

        def px(p: tuple) -> np.ndarray:
            return camera.project(np.array([p[0], p[1], z]))

        def part(colour, texture: str) -> int:
            return canvas.part(np.clip(colour, 0, 255), texture, BICYCLE, instance)

        spokes, tyre, frame = part((150, 150, 150), "metal"), part((25, 25, 25), "rubber"), part(self.colour, "paint")
        radius = self.wheel * scale
        for hub in (self.rear_hub, self.front_hub):
            centre = px(hub)
            canvas.disc(spokes, centre, radius)
            canvas.disc(tyre, centre, radius, thickness=max(1, round(0.07 * scale)))
            canvas.disc(tyre, centre, max(0.04 * scale, 0.5))
        head = self.point(0.45, 0.82)
        thickness = round(0.045 * scale)
        for a, b in ((self.rear_hub, self.bottom_bracket), (self.bottom_bracket, self.seat),
                     (self.seat, self.rear_hub), (self.point(-0.2, 0.8), head), (self.bottom_bracket, head),
                     (head, self.front_hub), (head, self.handlebar)):
            canvas.line(frame, px(a), px(b), thickness)
        saddle = part((30, 30, 30), "rubber")
        sx, sy = self.seat
        canvas.fill3d(saddle, camera, [[[sx - 0.12, sy, z], [sx + 0.12, sy, z], [sx + 0.1, sy + 0.05, z],
                                        [sx - 0.1, sy + 0.05, z]]])
        hx, hy = self.handlebar
        canvas.line(saddle, px((hx - 0.08, hy)), px((hx + 0.08, hy)), round(0.04 * scale))
