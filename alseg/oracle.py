"""The simulated annotator: reveals labels of the chosen regions and counts the clicks.

The oracle hands labels to the pool (alseg.pool.Pool.reveal), which owns the revealed map's
encoding; void comes as IGNORE (a void pixel, or a region whose majority is void).

Click costs (README.md, "Regions and costs"):

- dominant: 1 click per region (pixel, superpixel, box or image).
- precise: 1 click per pixel region; any other region R costs, with the ground truth inside
  it traced as polygons (void is never traced),
    components: for each class c, the 8-connected components of (truth == c) & R,
  + border points: walking every contour of R (its outer borders and the borders of its
    holes, pixel by pixel as cv2.findContours traces them, cyclically), the steps between
    consecutive contour pixels whose ground-truth labels differ (void counts as a label);
    steps along the image frame (both pixels on the same image edge) do not count,
  + vertices: for each component, the vertices of cv2.approxPolyDP(outer contour,
    `annotation.polygon_epsilon`, closed) (a one-pixel component has 1 vertex),
  and at least 1 click (looking at a region that holds only void is still a click).
  With R = the whole image (region=image) there are no border points, so an image costs
  its polygon count: components + vertices.
- multiclass (Hwang et al., NeurIPS 2023): the annotator names every class present in the
  region (a multi-hot answer; void is never named), for `annotation.click_per_class` clicks
  per class named, and that for one class at least (a region holding only void still cost a
  look). Void pixels inside the region stay unlabelled, as with precise labels. Pixel regions
  name their one class, for 1 click (precise labels). The budget plans with the noise-free
  costs; what a cycle spends counts the classes actually named.
"""
from __future__ import annotations

import logging

import cv2
import numpy as np

from alseg.cache import cache_key, cached_array
from alseg.cpus import thread_pool
from alseg.data.base import IGNORE
from alseg.errors import AlsegError
from alseg.regions import Regions
from alseg.progress import Progress

log = logging.getLogger(__name__)

COST_VERSION = 1  # bump when the cost model changes, so cached costs are rebuilt


def _with_noise(labels: np.ndarray, rate: float, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Each label becomes a uniformly random other class with probability `rate`."""
    if rate <= 0:
        return labels
    wrong = (rng.random(labels.shape) < rate) & (labels < num_classes)
    shift = rng.integers(1, num_classes, size=labels.shape)
    return np.where(wrong, (labels.astype(np.int64) + shift) % num_classes, labels).astype(labels.dtype)


def _noisy_sets(named: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Annotator noise on multi-class answers (bool [K, C]): each answer naming a class is wrong
    with probability `rate`; a wrong answer naming two or more classes drops one of them or (with
    probability 1/2, and if a class is left to add) adds an absent one, an answer naming one
    class adds an absent one; the class dropped or added is drawn uniformly."""
    if rate <= 0:
        return named
    named = named.copy()
    for k in np.flatnonzero((rng.random(len(named)) < rate) & named.any(axis=1)):
        present, absent = np.flatnonzero(named[k]), np.flatnonzero(~named[k])
        add = len(absent) > 0 and (len(present) == 1 or rng.random() < 0.5)
        if add:
            named[k, rng.choice(absent)] = True
        elif len(present) > 1:
            named[k, rng.choice(present)] = False
    return named


def multiclass_answers(region_of: np.ndarray, truth: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The classes present in each region: for pixels with region ids `region_of` and ground
    truth `truth` (both [P]), returns `which` [P] (each pixel's answer) and `named` bool [K, C]
    (one answer per distinct region, in ascending id; void is never named)."""
    _, which = np.unique(region_of, return_inverse=True)
    named = np.zeros((int(which.max(initial=-1)) + 1, num_classes), bool)
    seen = truth < num_classes
    named[which[seen], truth[seen]] = True
    return which, named


def classes_per_region(rmap: np.ndarray, truth: np.ndarray, count: int, num_classes: int) -> np.ndarray:
    """How many (non-void) classes each region 0..count-1 of one image holds, int64 [count]."""
    cls = np.where(truth < num_classes, truth, num_classes).astype(np.int64)
    hist = np.bincount((rmap.astype(np.int64) * (num_classes + 1) + cls).ravel(), minlength=count * (num_classes + 1))
    return (hist[: count * (num_classes + 1)].reshape(count, num_classes + 1)[:, :num_classes] > 0).sum(axis=1)


def _outer(contours, hierarchy) -> list[np.ndarray]:
    """The outer contours of a RETR_CCOMP result: one per 8-connected component."""
    if hierarchy is None:
        return []
    return [c for c, h in zip(contours, hierarchy[0]) if h[3] < 0]


def _vertices(contours: list[np.ndarray], epsilon: float) -> int:
    return sum(len(cv2.approxPolyDP(c, epsilon, True)) for c in contours)


def _border_points(contours, labels: np.ndarray, y0: int, x0: int, height: int, width: int) -> int:
    """Label changes between consecutive pixels of each contour (cyclic), leaving out steps
    along the image frame. `labels` is the crop at (y0, x0) that the contours live in."""
    points = np.concatenate(contours)[:, 0, :]
    lengths = np.fromiter((len(c) for c in contours), np.int64, len(contours))
    ends = np.cumsum(lengths)
    nxt = np.arange(1, len(points) + 1)
    nxt[ends - 1] = ends - lengths  # the last pixel of a contour steps back to its first
    xs, ys = points[:, 0], points[:, 1]
    lv = labels[ys, xs]
    changed = lv != lv[nxt]
    if y0 == 0 or x0 == 0 or y0 + labels.shape[0] == height or x0 + labels.shape[1] == width:
        gy, gx = ys + y0, xs + x0
        ny, nx = gy[nxt], gx[nxt]
        changed &= ~(((gy == 0) & (ny == 0)) | ((gy == height - 1) & (ny == height - 1))
                     | ((gx == 0) & (nx == 0)) | ((gx == width - 1) & (nx == width - 1)))
    return int(np.count_nonzero(changed))


def region_costs(rmap: np.ndarray, truth: np.ndarray, count: int, epsilon: float) -> np.ndarray:
    """Precise clicks of regions 0..count-1 of one image (int32 [count]); see the module doc.

    Vectorised passes find each region's bounding box and class histogram; cv2 then traces
    contours on each region's crop only (the region's own contours are the components too
    when a single class fills it).
    """
    height, width = rmap.shape
    flat = rmap.ravel()
    order = np.argsort(flat, kind="stable")
    starts = np.searchsorted(flat[order], np.arange(count))
    area = np.diff(np.append(starts, flat.size))
    ys, xs = np.divmod(order, width)
    present = starts[area > 0]
    box = np.zeros((count, 4), np.int64)
    box[area > 0] = np.stack([np.minimum.reduceat(ys, present), np.maximum.reduceat(ys, present) + 1,
                              np.minimum.reduceat(xs, present), np.maximum.reduceat(xs, present) + 1], 1)
    hist = np.bincount(flat.astype(np.int64) * 256 + truth.ravel(), minlength=count * 256).reshape(count, 256)
    void = hist[:, IGNORE] > 0
    classes_in = hist[:, :IGNORE] > 0
    single = (classes_in.sum(axis=1) == 1) & ~void
    costs = np.ones(count, np.int32)
    for r in np.flatnonzero(area > 1):
        y0, y1, x0, x1 = box[r]
        inside = rmap[y0:y1, x0:x1] == r
        contours, tree = cv2.findContours(inside.view(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
        if single[r]:  # one class fills the region: its components are the region's own
            outer = _outer(contours, tree)
            costs[r] = len(outer) + _vertices(outer, epsilon)
            continue
        labels = truth[y0:y1, x0:x1]
        cost = _border_points(contours, labels, y0, x0, height, width)
        for c in np.flatnonzero(classes_in[r]):
            piece = ((labels == c) & inside).view(np.uint8)
            outer = _outer(*cv2.findContours(piece, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE))
            cost += len(outer) + _vertices(outer, epsilon)
        costs[r] = max(1, cost)
    return costs


def precise_costs(regions: Regions, truth: np.ndarray, epsilon: float) -> np.ndarray:
    """Clicks per region [N, R] (int32, 0 beyond counts[i]) of precise labelling, image by
    image on a thread pool (cv2 releases the GIL), with progress in the log."""
    n, r = len(regions.counts), regions.max_regions
    out = np.zeros((n, r), np.int32)

    def one(i: int) -> None:
        count = int(regions.counts[i])
        out[i, :count] = region_costs(np.asarray(regions.maps[i]), np.asarray(truth[i]), count, epsilon)

    log.info("precise click costs: tracing the ground truth of %d regions in %d images ...",
             int(regions.counts.sum()), n)
    with Progress("precise click costs", n) as progress, thread_pool() as pool:
        for _ in pool.map(one, range(n)):
            progress.tick()
    log.info("precise click costs of %d images computed in %.1fs: %d clicks in all, %.1f per region",
             n, progress.elapsed, int(out.sum()), out.sum() / max(1, int(regions.counts.sum())))
    return out


class Oracle:
    """Reveals ground truth for `annotation=dominant|precise|multiclass` and says what each
    region costs."""

    def __init__(self, cfg, regions: Regions, truth: np.ndarray, num_classes: int, rng: np.random.Generator):
        if cfg.name not in ("dominant", "precise", "multiclass"):
            raise AlsegError(f"unknown annotation {cfg.name!r}; available: dominant, precise, multiclass")
        if not 0 <= cfg.noise < 1:
            raise AlsegError(f"annotation.noise must be in [0, 1), got {cfg.noise}")
        if cfg.name == "multiclass" and regions.maps is None and cfg.click_per_class != 1:
            raise AlsegError(f"region=pixel names one class per pixel for 1 click: set annotation.click_per_class=1 "
                             f"(got {cfg.click_per_class}) or choose a region type with a map")
        self.epsilon = float(cfg.polygon_epsilon) if cfg.name == "precise" else None  # float: one cache key per value
        self.cfg, self.regions, self.truth, self.num_classes, self.rng = cfg, regions, truth, num_classes, rng
        self._costs: np.ndarray | None = None

    @property
    def precise(self) -> bool:
        return self.cfg.name == "precise"

    @property
    def multiclass(self) -> bool:
        return self.cfg.name == "multiclass"

    def costs(self) -> np.ndarray | None:
        """Clicks per region as an int32 [N, R] array (0 beyond counts[i]), or None when every
        region costs one click (dominant labelling, or pixel regions). Precise costs are
        computed once per (data, regions, epsilon) and cached next to the region maps."""
        if not (self.precise or self.multiclass) or self.regions.maps is None:
            return None
        if self._costs is None and self.multiclass:
            self._costs = self._multiclass_costs()
        if self._costs is None:
            build = lambda: precise_costs(self.regions, self.truth, self.epsilon)  # noqa: E731
            if self.regions.cache_dir is None or self.regions.key is None:
                self._costs = build()
            else:
                digest = cache_key(regions=self.regions.key, epsilon=self.epsilon, version=COST_VERSION)
                self._costs = np.array(cached_array(self.regions.cache_dir, f"costs/precise-{digest}", build))
        return self._costs

    def reveal(self, pool, images: np.ndarray, regions: np.ndarray) -> float:
        """Reveal the labels of the chosen (image, region) pairs into `pool`; return clicks."""
        if self.multiclass:
            return self._reveal_multiclass(pool, images, regions, self.cfg.noise)
        if self.regions.maps is None:
            self._reveal_pixels(pool, images, regions)
        elif self.precise:
            self._reveal_precise(pool, images, regions)
        else:
            self._reveal_dominant(pool, images, regions)
        costs = self.costs()
        return float(len(images) if costs is None else costs[images, regions].sum())

    def reveal_all(self, pool) -> float:
        """Every label of the pool, exactly (budget=full, the supervised reference); returns
        what asking every region would cost. With multi-class labels, every region's answer
        (without annotator noise)."""
        if self.multiclass:
            r = int(self.regions.counts.max(initial=0))
            images, regions = np.nonzero(np.arange(r) < self.regions.counts[:, None])
            return self._reveal_multiclass(pool, images, regions, 0.0)
        pool.reveal(slice(None), np.asarray(self.truth))
        costs = self.costs()
        return float(self.regions.counts.sum() if costs is None else costs.sum())

    def _reveal_pixels(self, pool, images, regions):
        w = self.truth.shape[2]
        ys, xs = np.divmod(regions, w)
        pool.reveal((images, ys, xs), _with_noise(self.truth[images, ys, xs], self.cfg.noise, self.num_classes, self.rng))

    def _reveal_dominant(self, pool, images, regions):
        c = self.num_classes
        for i in np.unique(images):
            chosen = regions[images == i]
            rmap = np.asarray(self.regions.maps[i]).astype(np.int64)
            truth = np.where(self.truth[i] == IGNORE, c, self.truth[i]).astype(np.int64)
            votes = np.bincount((rmap * (c + 1) + truth).ravel(), minlength=(rmap.max() + 1) * (c + 1))
            majority = votes.reshape(-1, c + 1).argmax(axis=1)[chosen]
            majority = _with_noise(majority, self.cfg.noise, c, self.rng)
            value = np.full(rmap.max() + 1, IGNORE, dtype=np.int64)
            value[chosen] = np.where(majority == c, IGNORE, majority)
            mask = np.isin(rmap, chosen)
            pool.reveal((i, mask), value[rmap[mask]])

    def _reveal_precise(self, pool, images, regions):
        """The ground truth inside each chosen region; with noise, each class inside a region
        (what one label click names) becomes a random other class with probability q."""
        c = self.num_classes
        for i in np.unique(images):
            rmap = np.asarray(self.regions.maps[i])
            mask = np.isin(rmap, regions[images == i])
            truth = self.truth[i][mask]
            if self.cfg.noise > 0:
                cls = np.where(truth == IGNORE, c, truth).astype(np.int64)
                pieces, inverse = np.unique(rmap[mask].astype(np.int64) * (c + 1) + cls, return_inverse=True)
                truth = _with_noise(pieces % (c + 1), self.cfg.noise, c, self.rng)[inverse]
                truth = np.where(truth == c, IGNORE, truth)
            pool.reveal((i, mask), truth)

    def _multiclass_costs(self) -> np.ndarray:
        """Clicks per region [N, R] (float32, 0 past counts[i]): click_per_class per class
        present, one class at least."""
        counts, n = self.regions.counts, len(self.regions.counts)
        out = np.zeros((n, self.regions.max_regions), np.float32)
        for i in range(n):
            present = classes_per_region(np.asarray(self.regions.maps[i]), np.asarray(self.truth[i]), int(counts[i]),
                                         self.num_classes)
            out[i, : counts[i]] = np.maximum(present, 1) * float(self.cfg.click_per_class)
        return out

    def _reveal_multiclass(self, pool, images: np.ndarray, regions: np.ndarray, noise: float) -> float:
        """Each chosen region's multi-hot answer into `pool` (Pool.reveal_sets); returns the
        clicks: click_per_class per class named, one class at least per region."""
        clicks, w = 0.0, self.truth.shape[2]
        for i in np.unique(images):
            chosen = regions[images == i]
            if self.regions.maps is None:
                where = np.divmod(chosen, w)
                region_of = chosen
            else:
                rmap = np.asarray(self.regions.maps[i])
                where = np.isin(rmap, chosen)
                region_of = rmap[where]
            truth = np.asarray(self.truth[i])[where]
            which, named = multiclass_answers(region_of, truth, self.num_classes)
            named = _noisy_sets(named, noise, self.rng)
            clicks += float(np.maximum(named.sum(axis=1), 1).sum()) * float(self.cfg.click_per_class)
            # void pixels stay unlabelled, as with precise labels: the extra empty answer
            empty = np.zeros((1, self.num_classes), bool)
            pool.reveal_sets(int(i), where, np.vstack([named, empty]), np.where(truth < self.num_classes, which, len(named)))
        return clicks
