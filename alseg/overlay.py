"""Pictures of what was asked: the regions chosen in a cycle, outlined and coloured by their
revealed label."""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
from matplotlib.figure import Figure  # no pyplot: drawing files leaves the global backend alone

from alseg.pool import atomic_write
from alseg.regions import Regions

OUTLINE = np.array([1.0, 0.9, 0.0])  # yellow: stands out from the dimmed image and the palettes
PANEL_INCHES, DPI = 3.0, 100


def region_borders(rmap: np.ndarray, picked: np.ndarray) -> np.ndarray:
    """Pixels of the picked regions that touch another region (4-neighbours) or the image
    frame: the outline of each picked region, also between two picked neighbours."""
    inside = np.isin(rmap, picked)
    edge = np.zeros(rmap.shape, bool)
    edge[[0, -1], :] = True
    edge[:, [0, -1]] = True
    vertical = rmap[1:, :] != rmap[:-1, :]
    horizontal = rmap[:, 1:] != rmap[:, :-1]
    edge[1:, :] |= vertical
    edge[:-1, :] |= vertical
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    return inside & edge


def save_query_overlay(
    path: Path, images: np.ndarray, revealed: np.ndarray, regions: Regions,
    chosen: tuple[np.ndarray, np.ndarray], palette: np.ndarray, show: int,
) -> None:
    """Draw the first `show` pool images with this cycle's chosen regions in their revealed
    class colours (pixels as dots; regions tinted and outlined in yellow; white = asked, no
    label); the rest of the image is dimmed."""
    show = min(show, len(images))
    if show == 0:
        return
    h, w = images.shape[1:3]
    colours = np.vstack([palette, np.full((256 - len(palette), 3), 255, np.uint8)])
    fig = Figure(figsize=(PANEL_INCHES * show, PANEL_INCHES * h / w + 0.4))
    axes = fig.subplots(1, show, squeeze=False)
    # the panel shows the image at about PANEL_INCHES * DPI pixels: thicken outlines to match
    thickness = max(1, math.ceil(w / (PANEL_INCHES * DPI)))
    for ax, i in zip(axes[0], range(show)):
        picked = chosen[1][chosen[0] == i]
        image = np.asarray(images[i]).astype(np.float32) / 255
        if regions.maps is None:
            ys, xs = np.divmod(picked, image.shape[1])
            ax.imshow(image)
            ax.scatter(xs, ys, c=colours[revealed[i, ys, xs]] / 255, s=14, edgecolors="black", linewidths=0.6)
        else:
            rmap = np.asarray(regions.maps[i])
            mask = np.isin(rmap, picked)
            tinted = np.where(mask[..., None], 0.35 * image + 0.65 * colours[revealed[i]] / 255, 0.6 * image)
            border = region_borders(rmap, picked).view(np.uint8)
            if thickness > 1:
                border = cv2.dilate(border, np.ones((thickness, thickness), np.uint8))
            tinted[border.astype(bool)] = OUTLINE
            ax.imshow(tinted, interpolation="nearest")
        ax.set_title(f"image {i}: {len(picked)} asked", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=DPI))
