"""Segmentation models from segmentation_models_pytorch, padded to the size they need.

A model maps normalised images [B, 3, H, W] to logits [B, C, H, W]. alseg's own models also
expose `features(x)` (the decoder's last feature map) and `head(features, size)`, so that
MC-dropout passes re-run only the head and core-set strategies get embeddings; any other
`torch.nn.Module` works too (every pass then runs the whole model).

`model.dropout` puts a Dropout2d before the head of every run's model, whatever the strategy,
so that every strategy of an experiment trains the same network; MC strategies also sample it
while scoring (`mc_passes`). `model.freeze_encoder` keeps a pretrained encoder as loaded: only
the decoder and head train.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from alseg.errors import AlsegError

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255


def to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> normalised float [B, 3, H, W] (ImageNet statistics)."""
    return normalise(images.permute(0, 3, 1, 2).float())


def normalise(x: torch.Tensor) -> torch.Tensor:
    """float [B, 3, H, W] in 0-255 -> ImageNet-normalised; on a GPU in channels_last memory
    format, which convolutions there run fastest in."""
    mean, std = _statistics(x.device)
    x = (x - mean) / std
    return x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x


@functools.cache
def _statistics(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """MEAN and STD on `device`, copied there once (not once per batch)."""
    return MEAN.to(device), STD.to(device)


def autocast(device: torch.device) -> torch.autocast:
    """Mixed precision on a GPU: bf16 where supported, else fp16 (then train with a GradScaler)."""
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device.type, dtype=dtype, enabled=cuda)


class Segmenter(torch.nn.Module):
    """An smp model split into features and head, with optional Dropout2d before the head.

    The input is padded (reflect) to a multiple of the network's stride and the logits are
    cropped back, so any working size runs without distorting images or labels. A frozen
    encoder has no trainable weights and stays in eval mode (its batch-norm statistics as
    loaded), so training runs, and back-propagates through, the decoder and head only.
    """

    def __init__(self, net: torch.nn.Module, multiple: int, dropout: float | None = None,
                 freeze_encoder: bool = False) -> None:
        super().__init__()
        self.net, self.multiple, self.frozen = net, multiple, freeze_encoder
        self.dropout = torch.nn.Dropout2d(dropout) if dropout else torch.nn.Identity()
        if freeze_encoder:
            net.encoder.requires_grad_(False)
            net.encoder.eval()

    def train(self, mode: bool = True) -> "Segmenter":
        super().train(mode)
        if self.frozen:
            self.net.encoder.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's output (at the padded size's decoder resolution)."""
        h, w = x.shape[-2:]
        ph, pw = -h % self.multiple, -w % self.multiple
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect")
        return self.net.decoder(self.net.encoder(x))

    def head(self, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Logits [B, C, *size] from decoder features (dropout applies here)."""
        h, w = size
        return self.net.segmentation_head(self.dropout(features))[..., :h, :w]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x), x.shape[-2:])


class Ensemble(torch.nn.Module):
    """Several networks as one (`train.ensemble`): the prediction is the mean of the members'
    softmax, returned as its log, so that argmax, softmax and every strategy see the ensemble."""

    def __init__(self, members: list[torch.nn.Module]) -> None:
        super().__init__()
        self.members = torch.nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _log_mean_softmax([member(x) for member in self.members])


class SplitEnsemble(Ensemble):
    """An ensemble of split members: its features are theirs side by side, and its head runs
    each member's head (with that member's dropout) on its own share."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([member.features(x) for member in self.members], dim=1)

    def head(self, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        shares = features.chunk(len(self.members), dim=1)
        return _log_mean_softmax([member.head(f, size) for member, f in zip(self.members, shares)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x), x.shape[-2:])


def ensemble(models: list[torch.nn.Module]) -> torch.nn.Module:
    """The run's predictor: its one model, or the ensemble of its `train.ensemble` members."""
    if len(models) == 1:
        return models[0]
    return SplitEnsemble(models) if all(is_split(m) for m in models) else Ensemble(models)


def _log_mean_softmax(logits: list[torch.Tensor]) -> torch.Tensor:
    probs = torch.stack([z.float().softmax(dim=1) for z in logits]).mean(dim=0)
    return probs.clamp_min(1e-12).log()


def build_model(cfg, num_classes: int) -> torch.nn.Module:
    """The `model` config group as a Segmenter (`model.dropout` before the head, 0 or null for
    none; `model.freeze_encoder`). With `model._target_`, a user's factory
    `target(num_classes=C, **model.kwargs)`."""
    import segmentation_models_pytorch as smp

    if cfg.get("_target_"):
        return build_custom_model(cfg, num_classes)
    kwargs = OmegaConf.to_container(OmegaConf.create(cfg.get("kwargs") or {}), resolve=True)
    weights = cfg.encoder_weights
    local = weights is not None and is_weights_file(str(weights))
    try:
        net = smp.create_model(
            cfg.arch, encoder_name=cfg.encoder, encoder_weights=None if local else weights, classes=num_classes, **kwargs
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise AlsegError(f"cannot build model {cfg.arch} with encoder {cfg.encoder}: {exc}") from exc
    except Exception as exc:  # a download that failed: offline machine, proxy, hub outage
        raise AlsegError(
            f"could not fetch the {weights} weights of encoder {cfg.encoder} ({type(exc).__name__}: {exc}). "
            "On an offline machine, download them elsewhere and pass a local file: "
            "model.encoder_weights=/path/to/encoder.pth (a state dict or .safetensors)"
        ) from exc
    if local:
        load_encoder_weights(net.encoder, str(weights))
    depth = int(kwargs.get("encoder_depth", 5))
    return Segmenter(net, 2**depth, cfg.get("dropout"), bool(cfg.get("freeze_encoder")))


def build_custom_model(cfg, num_classes: int) -> torch.nn.Module:
    """A user's model: any callable returning a torch.nn.Module that maps [B, 3, H, W] to
    logits [B, C, H, W] (optionally with `features(x)` and `head(features, size)`)."""
    from hydra.utils import get_object

    try:
        factory = get_object(cfg._target_)
    except Exception as exc:
        raise AlsegError(f"cannot import model._target_={cfg._target_}: {exc}") from exc
    kwargs = OmegaConf.to_container(OmegaConf.create(cfg.get("kwargs") or {}), resolve=True)
    model = factory(num_classes=num_classes, **kwargs)
    if not isinstance(model, torch.nn.Module):
        raise AlsegError(f"model._target_={cfg._target_} returned {type(model).__name__}, expected a torch.nn.Module")
    return model


def check_model(model: torch.nn.Module, num_classes: int, size: tuple[int, int], device: torch.device) -> None:
    """Fail early, naming the class, when a model does not map [1, 3, H, W] to [1, C, H, W]."""
    x = torch.zeros(1, 3, *size, device=device)
    name = type(model).__name__
    model.eval()
    try:
        with torch.inference_mode():
            out = model(x)
    except Exception as exc:
        raise AlsegError(f"model {name} failed on an input of shape {tuple(x.shape)}: {type(exc).__name__}: {exc}") from exc
    expected = (1, num_classes, *size)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise AlsegError(f"model {name} must return logits of shape [B, C, H, W] = {expected}, got {got}")


def is_weights_file(value: str) -> bool:
    """`model.encoder_weights` names a local file (not a hub name such as 'imagenet')."""
    return "/" in value or value.endswith((".pt", ".pth", ".bin", ".safetensors"))


def load_encoder_weights(encoder: torch.nn.Module, path: str) -> None:
    """Load a local encoder state dict (torch or safetensors), e.g. for offline clusters."""
    from pathlib import Path

    if not Path(path).is_file():
        raise AlsegError(f"model.encoder_weights={path}: no such file")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise AlsegError(f"model.encoder_weights={path} is not a readable state dict: {exc}") from exc
    state = state.get("state_dict", state)
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if len(missing) == len(encoder.state_dict()):
        raise AlsegError(f"model.encoder_weights={path}: none of its keys match the encoder ({len(unexpected)} unexpected keys)")


def enable_dropout(model: torch.nn.Module) -> int:
    """Put only the dropout layers in training mode (batch norm stays in eval); returns how many."""
    layers = [m for m in model.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0]
    for m in layers:
        m.train()
    return len(layers)


def is_split(model: torch.nn.Module) -> bool:
    """The model exposes `features(x)` and `head(features, size)`."""
    return hasattr(model, "features") and hasattr(model, "head")


def mc_passes(model: torch.nn.Module, x: torch.Tensor, passes: int, scope: str, keep_features: bool = False):
    """(features or None, an iterator of `passes` logits), MC dropout when `passes` > 1.

    scope `head`: the features come from one pass in eval mode (the decoder's own dropout
    layers stay off, so every pass sees the same features) and only the head re-runs, its
    dropout sampled; a model without features/head runs whole. scope `full`: every pass re-runs
    the whole network with all dropout layers sampled (PixelPick's code); kept features come
    from an eval pass. One pass is deterministic (eval mode).
    """
    model.eval()
    size = x.shape[-2:]
    head_only = is_split(model) and (scope == "head" or passes == 1)
    features = model.features(x) if is_split(model) and (head_only or keep_features) else None
    if passes > 1:
        sampled = enable_dropout(model)
        if head_only and isinstance(getattr(model, "dropout", None), torch.nn.Identity):
            sampled = 0  # alseg's Segmenter without model.dropout: nothing stochastic after the features
        if sampled == 0:
            raise AlsegError(f"{passes} MC-dropout passes need dropout before the head, but {type(model).__name__} "
                             "has none: set model.dropout (e.g. 0.2), or strategy.mc_scope=full for a model whose "
                             "own dropout layers should be sampled")
    if head_only:
        return features, (model.head(features, size) for _ in range(passes))
    return features, (model(x) for _ in range(passes))
