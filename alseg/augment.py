"""Training-time augmentation on batched tensors (on the device when there is one).

The protocols' augmentations: random horizontal flip, random rescale followed by a crop (or
ignore-padding) back to the working size, and colour jitter. Images are float [B, 3, H, W]
in 0-255 before normalisation; labels [B, H, W] with 255 = ignore.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from alseg.data.base import IGNORE
from alseg.device import upload


def _uniform(n: int, low: float, high: float, generator: torch.Generator, device) -> torch.Tensor:
    return upload(low + (high - low) * torch.rand(n, generator=generator), device)


def augment(x: torch.Tensor, y: torch.Tensor, cfg, generator: torch.Generator, rows: slice = slice(None),
            size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply `train.augment` (hflip, scale [min, max], jitter) to a batch, or to the `rows` of a
    batch of `size` images that this process trains on (alseg.distributed): the draws are those
    of the whole batch, so every process draws alike and an image is augmented as it would be
    in one process."""
    b, device = size or len(x), x.device
    if cfg.hflip:
        flip = upload((torch.rand(b, generator=generator) < 0.5)[rows], device)
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        y = torch.where(flip.view(-1, 1, 1), y.flip(-1), y)
    if cfg.get("scale"):
        x, y = _rescale_and_crop(x, y, float(_uniform(1, *cfg.scale, generator, "cpu")), generator)
    if cfg.get("jitter"):
        j = float(cfg.jitter)
        brightness = _uniform(b, 1 - j, 1 + j, generator, device)[rows].view(-1, 1, 1, 1)
        contrast = _uniform(b, 1 - j, 1 + j, generator, device)[rows].view(-1, 1, 1, 1)
        saturation = _uniform(b, 1 - j, 1 + j, generator, device)[rows].view(-1, 1, 1, 1)
        x = x * brightness
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * contrast + mean
        grey = x.mean(dim=1, keepdim=True)
        x = ((x - grey) * saturation + grey).clamp(0, 255)
    return x, y


def _rescale_and_crop(x: torch.Tensor, y: torch.Tensor, scale: float, generator: torch.Generator):
    """Resize the batch by `scale`, then take a random window of the original size (padding
    images with 0 and labels with ignore when the batch got smaller)."""
    h, w = x.shape[-2:]
    sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
    x = F.interpolate(x, size=(sh, sw), mode="bilinear", align_corners=False)
    y = F.interpolate(y[:, None].float(), size=(sh, sw), mode="nearest")[:, 0].to(y.dtype)
    ph, pw = max(0, h - sh), max(0, w - sw)
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), value=0.0)
        y = F.pad(y, (0, pw, 0, ph), value=IGNORE)
    top = int(torch.randint(0, x.shape[-2] - h + 1, (1,), generator=generator))
    left = int(torch.randint(0, x.shape[-1] - w + 1, (1,), generator=generator))
    return x[..., top : top + h, left : left + w], y[..., top : top + h, left : left + w]
