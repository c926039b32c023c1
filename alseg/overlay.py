"""Pictures of what was asked: the regions chosen in a cycle, coloured by their revealed label."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from alseg.regions import Regions  # noqa: E402


def save_query_overlay(
    path: Path, images: np.ndarray, revealed: np.ndarray, regions: Regions,
    chosen: tuple[np.ndarray, np.ndarray], palette: np.ndarray, show: int,
) -> None:
    """Draw the first `show` pool images with this cycle's chosen regions in their revealed
    class colours (pixels as dots, regions as tinted areas; white = asked, no label)."""
    show = min(show, len(images))
    if show == 0:
        return
    colours = np.vstack([palette, np.full((256 - len(palette), 3), 255, np.uint8)])
    fig, axes = plt.subplots(1, show, figsize=(3 * show, 3 * images.shape[1] / images.shape[2] + 0.4), squeeze=False)
    for ax, i in zip(axes[0], range(show)):
        picked = chosen[1][chosen[0] == i]
        image = np.asarray(images[i]).astype(np.float32) / 255
        if regions.maps is None:
            ys, xs = np.divmod(picked, image.shape[1])
            ax.imshow(image)
            ax.scatter(xs, ys, c=colours[revealed[i, ys, xs]] / 255, s=14, edgecolors="black", linewidths=0.6)
        else:
            mask = np.isin(np.asarray(regions.maps[i]), picked)
            tinted = np.where(mask[..., None], 0.35 * image + 0.65 * colours[revealed[i]] / 255, 0.6 * image)
            ax.imshow(tinted)
        ax.set_title(f"image {i}: {len(picked)} asked", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
