"""Procedural street scenes with dense labels: the default dataset, needing no files.

A pinhole camera (height 1, looking along the street) sees sky, a hazy skyline, building
facades (or hedges) along both sides, a road with lane markings and kerbs, pavements, trees,
cars, pedestrians, poles and signs.  Facade windows, paving tiles and lane markings come from
inverting the projection per pixel, so they have correct perspective.  Texture, cast shadows,
smooth illumination, per-image white balance and noise make a pixel's colour ambiguous between
classes.  Everything is vectorised numpy/cv2 drawing and deterministic from a seed.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

CLASS_NAMES: tuple[str, ...] = (
    "sky", "building", "road", "pavement", "vegetation", "car", "pedestrian", "pole", "sign",
)
SKY, BUILDING, ROAD, PAVEMENT, VEGETATION, CAR, PEDESTRIAN, POLE, SIGN = range(9)
VOID = 255
PALETTE: np.ndarray = np.array(  # CamVid colours
    [[128, 128, 128], [128, 0, 0], [128, 64, 128], [0, 0, 192], [128, 128, 0],
     [64, 0, 128], [64, 64, 0], [192, 192, 128], [192, 128, 128]], dtype=np.uint8)

_FACADES = np.array([[200, 190, 170], [165, 95, 75], [150, 150, 150], [215, 213, 205],
                     [110, 105, 100], [190, 165, 125], [125, 135, 145], [175, 145, 135]],
                    np.float32)
_CARS = np.array([[225, 225, 225], [160, 160, 165], [95, 95, 100], [35, 35, 40],
                  [170, 35, 35], [45, 65, 140], [45, 85, 55], [200, 180, 70]], np.float32)
_SIGNS = np.array([[200, 30, 30], [30, 70, 170], [230, 200, 40], [235, 235, 235]], np.float32)
_ONE = 1 << 4  # cv2 drawing uses 4 sub-pixel bits
Point = tuple[float, float]


def _jitter(rng: np.random.Generator, colour: Sequence[float], amount: float = 0.12) -> np.ndarray:
    """Colour multiplied per channel by a random factor in [1 - amount, 1 + amount]."""
    scale = rng.uniform(1 - amount, 1 + amount, 3).astype(np.float32)
    return np.asarray(colour, np.float32) * scale


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Smooth random field of shape [height, width] in [0, 1], with `cells` bumps across."""
    small = rng.random((max(2, cells * height // width + 1), cells + 1), dtype=np.float32)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def _frac(x: np.ndarray) -> np.ndarray:
    """Fractional part: x % 1, but several times faster in numpy."""
    return x - np.floor(x)


def _shaded(colour: np.ndarray, field: np.ndarray) -> np.ndarray:
    """[h, w, 3] image colour * field; colour is [3] or [1, w, 3], field is [h, w].

    Works per channel and merges with cv2: numpy broadcasting over a last axis of 3 is slow.
    """
    planes = [np.ascontiguousarray(colour[..., c] * field, dtype=np.float32) for c in range(3)]
    return cv2.merge(planes)


def _loguniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


class _Scene:
    """Image and label canvases plus the camera; world x right, y up, z forward."""

    def __init__(self, rng: np.random.Generator, height: int, width: int) -> None:
        self.rng, self.h, self.w = rng, height, width
        self.yh = height * rng.uniform(0.3, 0.48)  # horizon row
        self.xv = width * rng.uniform(0.35, 0.65)  # vanishing point column
        self.f = width * rng.uniform(0.5, 0.7)  # focal length in pixels
        self.z_min = self.f / (height - self.yh)  # depth of the ground seen at the bottom row
        self.ground_row = int(np.floor(self.yh + 0.5))  # first row centred below the horizon
        self.ys = np.arange(height, dtype=np.float32)[:, None] + 0.5
        self.xs = np.arange(width, dtype=np.float32)[None, :] + 0.5
        self.img = np.zeros((height, width, 3), np.float32)
        self.lab = np.zeros((height, width), np.uint8)

    def project(self, x: float, y: float, z: float) -> Point:
        return self.xv + self.f * x / z, self.yh + self.f * (1.0 - y) / z

    # ---- primitives: each paints the image and the label map ---------------------------
    def paint(self, mask: np.ndarray, cls: int | np.ndarray, colour: np.ndarray,
              region: tuple[slice, slice] = (slice(None), slice(None))) -> None:
        """Paint masked pixels of `region`; cls, colour broadcast to its [h, w], [h, w, 3]."""
        img = self.img[region]
        src = np.ascontiguousarray(np.broadcast_to(colour, img.shape), dtype=np.float32)
        cv2.copyTo(src, mask.astype(np.uint8), img)  # in place; much faster than numpy here
        np.copyto(self.lab[region], cls, where=mask)

    def poly(self, pts: Sequence[Point], cls: int, colour: np.ndarray) -> None:
        p = [np.rint(np.array(pts, np.float32) * _ONE).astype(np.int32)]
        cv2.fillPoly(self.img, p, tuple(map(float, colour)), cv2.LINE_8, 4)
        cv2.fillPoly(self.lab, p, cls, cv2.LINE_8, 4)

    def line(self, a: Point, b: Point, width: float, cls: int, colour: np.ndarray) -> None:
        a_, b_ = (round(a[0] * _ONE), round(a[1] * _ONE)), (round(b[0] * _ONE), round(b[1] * _ONE))
        thick = max(1, round(width))
        cv2.line(self.img, a_, b_, tuple(map(float, colour)), thick, cv2.LINE_8, 4)
        cv2.line(self.lab, a_, b_, cls, thick, cv2.LINE_8, 4)

    def disc(self, centre: Point, radius: float, cls: int, colour: np.ndarray) -> None:
        c, r = (round(centre[0] * _ONE), round(centre[1] * _ONE)), round(max(radius, 0.6) * _ONE)
        cv2.circle(self.img, c, r, tuple(map(float, colour)), -1, cv2.LINE_8, 4)
        cv2.circle(self.lab, c, r, cls, -1, cv2.LINE_8, 4)

    def darken(self, ground: Sequence[Point], factor: float) -> None:
        """Cast shadow: darken the image (not the labels) inside a ground polygon of (x, z)."""
        pts = np.array([self.project(x, 0, z) for x, z in ground])
        x0, y0 = np.maximum(np.floor(pts.min(0)).astype(int), 0)
        x1, y1 = np.minimum(np.ceil(pts.max(0)).astype(int) + 1, (self.w, self.h))
        if x1 > x0 and y1 > y0:
            mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
            corners = np.rint((pts - (x0, y0)) * _ONE).astype(np.int32)
            cv2.fillPoly(mask, [corners], 1, cv2.LINE_8, 4)
            self.img[y0:y1, x0:x1] *= np.where(mask, np.float32(factor), np.float32(1))[..., None]

    def box(self, x0: float, x1: float, y0: float, y1: float, z0: float, z1: float, cls: int,
            colour: np.ndarray, top: np.ndarray | None = None) -> None:
        """Axis-aligned 3D box: visible side face, top face (below eye level), near face."""
        p = self.project
        side = x0 if x0 > 0 else x1 if x1 < 0 else None
        if side is not None:
            self.poly([p(side, y0, z0), p(side, y0, z1), p(side, y1, z1), p(side, y1, z0)], cls,
                      colour * 0.75)
        if y1 < 1:
            self.poly([p(x0, y1, z0), p(x1, y1, z0), p(x1, y1, z1), p(x0, y1, z1)], cls,
                      (colour if top is None else top) * 1.12)
        self.poly([p(x0, y0, z0), p(x1, y0, z0), p(x1, y1, z0), p(x0, y1, z0)], cls, colour)

    # ---- layers, drawn back to front ---------------------------------------------------
    def sky(self) -> None:
        rng, rows = self.rng, slice(0, self.ground_row)
        overcast = rng.random() < 0.35
        top = _jitter(rng, [150, 155, 165] if overcast else [70, 125, 205])
        self.horizon_colour = _jitter(rng, [205, 205, 208] if overcast else [175, 200, 228], 0.06)
        t = self.ys[rows] / self.yh
        noise = _smooth_noise(rng, self.ground_row, self.w, 5)
        clouds = np.clip((noise - rng.uniform(0.4, 0.8)) * 3, 0, 1)
        self.img[rows] = (_shaded(top, (1 - t) * (1 - clouds))
                          + _shaded(self.horizon_colour, t * (1 - clouds))
                          + _shaded(_jitter(rng, [232, 232, 235], 0.05), clouds))

    def skyline(self) -> None:
        """Distant blocks (buildings, sometimes trees) just above the horizon, hazy."""
        rng, n = self.rng, 40
        edges = np.cumsum(rng.uniform(0.03, 0.12, n)) * self.w
        heights = rng.uniform(0.01, 0.1, n + 1) * self.h * (rng.random(n + 1) < 0.85)
        cls = np.where(rng.random(n + 1) < 0.8, BUILDING, VEGETATION).astype(np.uint8)
        grey = _jitter(rng, [140, 140, 145], 0.2)
        base = np.where((cls == BUILDING)[:, None], grey, [90, 115, 80])
        colour = 0.55 * base * rng.uniform(0.8, 1.2, (n + 1, 1)) + 0.45 * self.horizon_colour
        idx, rows = np.searchsorted(edges, self.xs[0]), slice(0, self.ground_row)
        mask = self.ys[rows] > self.yh - heights[idx]
        self.paint(mask, cls[idx], colour[idx], (rows, slice(None)))

    def ground(self, road_l: float, road_r: float) -> None:
        """Pavement below the horizon, road for -road_l < x < road_r, markings and shadow."""
        rng, h = self.rng, self.h - self.ground_row
        rows = (slice(self.ground_row, self.h), slice(None))
        dy = self.ys[rows[0]] - self.yh
        gz, gx = self.f / dy, (self.xs - self.xv) / dy  # ground depth [h, 1], lateral x [h, W]
        road = (gx > -road_l) & (gx < road_r)
        shadow = np.float32(1)
        if rng.random() < 0.6:  # long shadow of one side's buildings across the street
            side = rng.choice([-1, 1])
            edge = side * rng.uniform(-road_l, road_r) + 0.5 * np.sin(gz * rng.uniform(0.1, 0.5))
            shadow = np.where(gx * side > edge, np.float32(rng.uniform(0.5, 0.75)), np.float32(1))
        pave = _jitter(rng, rng.uniform(110, 175) + np.array([12, 4, -8]) * rng.normal())
        tiles = ((_frac(gx / 0.6) < 0.1) | (_frac(gz / 0.6) < 0.1)) & (gz < 6)
        kerb = np.minimum(np.abs(gx + road_l), np.abs(gx - road_r)) < 0.12
        shade = 0.85 + 0.3 * _smooth_noise(rng, h, self.w, 8) - 0.15 * tiles + 0.15 * kerb
        self.paint(~road, PAVEMENT, _shaded(pave, shade * shadow), rows)
        asphalt = _jitter(rng, [rng.uniform(60, 120)] * 3, 0.06)
        stains = (0.8 + 0.35 * _smooth_noise(rng, h, self.w, 12)) * shadow
        px = np.maximum(0.06, 0.6 * gz / self.f)  # marking half-width, at least ~1 px
        marks = (np.abs(gx + road_l - 0.25) < px) | (np.abs(gx - road_r + 0.25) < px) \
            | ((np.abs(gx - (road_r - road_l) / 2) < px) & (_frac(gz / 4) < 0.4))
        alpha = marks * np.clip(10 / gz, 0.3, 1) * rng.uniform(0.5, 1)
        paint = stains * (1 - alpha) + alpha * 215 / asphalt.mean()
        self.paint(road, ROAD, _shaded(asphalt, paint), rows)

    def facade(self, side: int, dist: float) -> None:
        """Wall plane x = side * dist, split along z into buildings, gaps and hedges."""
        rng, n = self.rng, 14
        cols = slice(0, int(np.ceil(self.xv))) if side < 0 else slice(int(self.xv), self.w)
        d = np.maximum(side * (self.xs[:, cols] - self.xv), 1e-3)  # [1, w] from vanishing point
        z, y = self.f * dist / d, 1.0 - (self.ys - self.yh) * dist / d  # wall depth and height
        seg = np.searchsorted(np.cumsum(rng.uniform(1.5, 7, n)) + rng.uniform(-1, 0.5), z[0])
        hedge = np.append(rng.random(n) < 0.15, False)  # segment n: beyond the street's end
        height = np.where(hedge, rng.uniform(0.6, 2.5, n + 1), rng.uniform(2, 8, n + 1))
        height *= rng.random(n + 1) < 0.9
        height[n] = 0
        colours = _FACADES[rng.integers(len(_FACADES), size=n + 1)]
        colours *= rng.uniform(0.8, 1.15, (n + 1, 1)) * rng.uniform(0.75, 1.1)  # sunlit or not
        spacing, lit = rng.uniform(0.8, 1.6, n + 1)[seg], (rng.random(n + 1) < 0.85)[seg]
        height, hedge, floor = height[seg], hedge[seg], rng.uniform(0.9, 1.3)
        mask = (d > 0.5) & (y >= 0) & (y < height)
        fy, fz = _frac(y / floor), _frac(z / spacing)
        win = (fy > 0.3) & (fy < 0.75) & (fz > 0.3) & (fz < 0.7) & (y > 1) & (y < height - 0.4)
        visible = np.clip(0.4 * spacing * d * d / (self.f * dist) - 0.5, 0, 1)  # fade below 1 px
        alpha = win * (visible * lit * ~hedge)
        glass = _jitter(rng, [55, 65, 80], 0.3) * rng.uniform(0.6, 2.2)
        tex = _smooth_noise(rng, self.h, mask.shape[1], self.w // 3)
        wall = _shaded(colours[seg][None], (0.9 + 0.2 * tex) * (1 - alpha)) + _shaded(glass, alpha)
        self.paint(mask & ~hedge, BUILDING, wall, (slice(None), cols))
        if hedge.any():
            leaves = _shaded(_jitter(rng, [70, 105, 55], 0.2), 0.6 + 0.8 * tex)
            self.paint(mask & hedge, VEGETATION, leaves, (slice(None), cols))

    # ---- objects, standing on the ground at (x, z) --------------------------------------
    def tree(self, x: float, z: float, trunk: float, radius: float) -> None:
        rng, s, p = self.rng, self.f / z, self.project
        if trunk > 0:
            bark = _jitter(rng, [85, 65, 50], 0.2)
            self.line(p(x, 0, z), p(x, trunk + radius / 2, z), 0.15 * s, VEGETATION, bark)
        green = _jitter(rng, [65, 110, 50], 0.25)
        for _ in range(rng.integers(5, 10)):
            dx, dy = rng.normal(0, 0.45 * radius, 2)
            self.disc(p(x + dx, trunk + radius + dy, z), rng.uniform(0.4, 0.7) * radius * s,
                      VEGETATION, green * rng.uniform(0.6, 1.3))

    def car(self, x: float, z: float, parked: bool) -> None:
        rng, p, s = self.rng, self.project, self.f / z
        x0, x1, z1 = x - 0.6, x + 0.6, z + 2.9
        paint = _jitter(rng, _CARS[rng.integers(len(_CARS))], 0.08)
        self.darken([(x0 - 0.1, z - 0.15), (x1 + 0.1, z - 0.15), (x1 + 0.1, z1), (x0 - 0.1, z1)],
                    0.45)
        self.box(x0, x1, 0.18, 0.62, z, z1, CAR, paint)
        cabin = (z + 0.8, z1 - 0.6) if parked or rng.random() < 0.5 else (z + 0.6, z1 - 0.8)
        self.box(x0 + 0.08, x1 - 0.08, 0.62, 0.97, *cabin, CAR, _jitter(rng, [45, 55, 65], 0.3),
                 top=paint)
        tyre = np.full(3, 25.0, np.float32)
        side = x0 if x0 > 0 else x1 if x1 < 0 else None
        if side is not None:
            for zw in (z + 0.55, z1 - 0.55):
                self.disc(p(side, 0.17, zw), 0.17 * self.f / zw, CAR, tyre)
        lamp = _jitter(rng, [200, 40, 35], 0.1) if s > 8 else paint
        for a, b in ((x0 + 0.05, x0 + 0.3), (x1 - 0.3, x1 - 0.05)):
            self.poly([p(a, 0, z), p(b, 0, z), p(b, 0.2, z), p(a, 0.2, z)], CAR, tyre)
            self.poly([p(a, 0.45, z), p(b, 0.45, z), p(b, 0.55, z), p(a, 0.55, z)], CAR, lamp)

    def pedestrian(self, x: float, z: float) -> None:
        rng, s, p = self.rng, self.f / z, self.project
        tall, stride = rng.uniform(1.0, 1.25), rng.uniform(0, 0.15)
        shirt, trousers = rng.uniform(15, 220, 3), rng.uniform(15, 150, 3)
        for k in (-1, 1):  # legs and arms
            self.line(p(x, 0.48 * tall, z), p(x + k * stride, 0, z), 0.1 * s, PEDESTRIAN, trousers)
            self.line(p(x + k * 0.15, 0.8 * tall, z), p(x + k * 0.2, 0.5 * tall, z), 0.06 * s,
                      PEDESTRIAN, shirt)
        self.poly([p(x - 0.14, 0.45 * tall, z), p(x + 0.14, 0.45 * tall, z),
                   p(x + 0.15, 0.83 * tall, z), p(x - 0.15, 0.83 * tall, z)], PEDESTRIAN, shirt)
        self.disc(p(x, 0.91 * tall, z), 0.08 * s, PEDESTRIAN, _jitter(rng, [200, 160, 130], 0.25))

    def pole(self, x: float, z: float, sign: bool) -> None:
        """A pole with a sign on top, or a street lamp, or a bare pole."""
        rng, s, p = self.rng, self.f / z, self.project
        top, metal = rng.uniform(2.2, 3.6), _jitter(rng, [rng.uniform(60, 170)] * 3, 0.05)
        self.line(p(x, 0, z), p(x, top, z), 0.08 * s, POLE, metal)
        if sign:
            colour, r, (cx, cy) = _SIGNS[rng.integers(len(_SIGNS))], 0.25 * s, p(x, top - 0.25, z)
            shape = rng.integers(3)
            if shape == 0:
                self.disc((cx, cy), r, SIGN, colour)
            else:
                corners = [(-1, -1), (1, -1), (1, 1), (-1, 1)] if shape == 1 else \
                    [(-1, -0.8), (1, -0.8), (0, 1)]
                self.poly([(cx + r * u, cy + r * v) for u, v in corners], SIGN, colour)
        elif rng.random() < 0.5:  # lamp arm over the road
            self.line(p(x, top, z), p(x * 0.75, top, z), 0.06 * s, POLE, metal)

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """Illumination, white balance, noise, blur and void band; uint8 image and labels."""
        rng, lab = self.rng, self.lab
        light = 0.75 + 0.5 * _smooth_noise(rng, self.h, self.w, 3)
        gain = rng.uniform(0.7, 1.25) * rng.uniform(0.9, 1.1, 3)
        noise = (rng.random(self.img.shape, dtype=np.float32) - 0.5) * rng.uniform(20, 60)
        # blurring after adding uniform noise makes it near-Gaussian, and softens edges like a lens
        img = cv2.GaussianBlur(self.img * _shaded(gain, light) + noise, (3, 3), 0.6)
        edge = np.zeros(lab.shape, bool)
        edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
        edge[1:] |= lab[1:] != lab[:-1]
        lab[edge & (lab <= CAR) & (_smooth_noise(rng, self.h, self.w, 4) > 0.62)] = VOID
        return np.clip(img, 0, 255).astype(np.uint8), lab


def make_scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """One image (uint8 [H,W,3] RGB) and its label map (uint8 [H,W], 255 = void)."""
    sc = _Scene(rng, height, width)
    road_l, road_r = rng.uniform(1.0, 2.2, 2)  # road edges left and right of the camera
    walk_l, walk_r = road_l + rng.uniform(0.8, 2.5), road_r + rng.uniform(0.8, 2.5)  # facades
    sc.sky()
    sc.skyline()
    sc.ground(road_l, road_r)
    sc.facade(-1, walk_l)
    sc.facade(1, walk_r)

    def on_pavement(margin: float) -> float:
        side = rng.choice([-1, 1])
        kerb, wall = (road_l, walk_l) if side < 0 else (road_r, walk_r)
        return side * rng.uniform(kerb + margin, wall - 0.2)

    objects = []  # (depth, draw) pairs, painted far to near
    near = sc.z_min
    for _ in range(rng.integers(0, 5)):  # trees and bushes
        x, z, radius = on_pavement(0.5), _loguniform(rng, near, 40), rng.uniform(0.5, 1.5)
        trunk = 0.0 if rng.random() < 0.3 else rng.uniform(1.2, 2.5)
        objects.append((z, lambda x=x, z=z, t=trunk, r=radius: sc.tree(x, z, t, r)))
    for _ in range(rng.integers(1, 7)):
        parked = rng.random() < 0.4
        lanes = [-road_l + 0.7, road_r - 0.7] if parked else [-road_l / 2, road_r / 2]
        x, z = rng.choice(lanes) + rng.normal(0, 0.1), _loguniform(rng, 1.2 * near, 45)
        objects.append((z, lambda x=x, z=z, pk=parked: sc.car(x, z, pk)))
    for _ in range(rng.poisson(2.0)):
        x, z = on_pavement(0.2), _loguniform(rng, max(near, 3), 30)
        objects.append((z, lambda x=x, z=z: sc.pedestrian(x, z)))
    for _ in range(1 + rng.poisson(1.5)):
        x, z = rng.choice([-road_l - 0.3, road_r + 0.3]), _loguniform(rng, max(near, 2.5), 40)
        objects.append((z, lambda x=x, z=z, sg=rng.random() < 0.7: sc.pole(x, z, sg)))
    if rng.random() < 0.4:  # an unlabelled street object (bin, bench, kiosk)
        x, z, size = on_pavement(0.3), _loguniform(rng, near, 20), rng.uniform(0.3, 0.9)
        tall, colour = rng.uniform(0.4, 1.2), rng.uniform(30, 200, 3).astype(np.float32)
        objects.append((z, lambda: sc.box(x, x + size, 0, tall, z, z + size, VOID, colour)))
    for _, draw in sorted(objects, key=lambda o: -o[0]):
        draw()
    return sc.finish()


def generate(num: int, height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """num scenes: images uint8 [num,H,W,3], labels uint8 [num,H,W]; same arguments, same arrays.

    Scene i depends only on (seed, i), so a smaller `num` gives a prefix of a larger one.
    """
    images = np.empty((num, height, width, 3), np.uint8)
    labels = np.empty((num, height, width), np.uint8)
    for i, child in enumerate(np.random.SeedSequence(seed).spawn(num)):
        images[i], labels[i] = make_scene(np.random.default_rng(child), height, width)
    return images, labels
