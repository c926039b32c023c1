"""Segmentation models from segmentation_models_pytorch, padded to the size they need."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from alseg.errors import AlsegError

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255


def to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> normalised float [B, 3, H, W] (ImageNet statistics)."""
    x = images.permute(0, 3, 1, 2).float()
    return (x - MEAN.to(x.device)) / STD.to(x.device)


class PadToMultiple(torch.nn.Module):
    """Pads the input (reflect) to a multiple of the network's stride and crops the logits
    back, so any working size runs without distorting images or labels."""

    def __init__(self, net: torch.nn.Module, multiple: int) -> None:
        super().__init__()
        self.net, self.multiple = net, multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = -h % self.multiple, -w % self.multiple
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect")
        return self.net(x)[..., :h, :w]


def build_model(cfg, num_classes: int) -> torch.nn.Module:
    """The `model` config group as a network mapping [B, 3, H, W] to logits [B, C, H, W]."""
    import segmentation_models_pytorch as smp

    kwargs = OmegaConf.to_container(cfg.get("kwargs") or {}, resolve=True)
    try:
        net = smp.create_model(
            cfg.arch, encoder_name=cfg.encoder, encoder_weights=cfg.encoder_weights, classes=num_classes, **kwargs
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise AlsegError(f"cannot build model {cfg.arch} with encoder {cfg.encoder}: {exc}") from exc
    depth = int(kwargs.get("encoder_depth", 5))
    return PadToMultiple(net, 2**depth)
