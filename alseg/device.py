"""Where tensors live: picking the device, and moving small host tensors to it without
stalling a GPU (a copy from pageable memory waits for all queued GPU work first)."""
from __future__ import annotations

import torch

from alseg.errors import AlsegError


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when available; `cuda:N` picks one of several GPUs."""
    name = str(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise AlsegError(f"device={name} but no CUDA device is visible; use device=cpu or device=auto")
        try:
            return torch.device(name)
        except RuntimeError as exc:
            raise AlsegError(f"device={name}: {exc}") from exc
    if name != "cpu":
        raise AlsegError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    return torch.device(name)


def tune_convolutions(device: torch.device) -> None:
    """On a GPU, let cuDNN pick the fastest convolution algorithms for the (fixed) input sizes
    of a run: a process-wide torch setting, so the run switches it on where it starts."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def upload(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A host tensor on `device`: on a GPU through pinned memory, asynchronously, so the
    GPU keeps working on what is queued (random draws, batch indices, per-image factors)."""
    device = torch.device(device)
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def device_generator(generator: torch.Generator, device: torch.device | str) -> torch.Generator:
    """A generator on `device` seeded by one draw from the run's (CPU) `generator`: random
    numbers are drawn where they are used, and still follow from the run's saved RNG state."""
    seed = int(torch.randint(2**62, (1,), generator=generator))
    return torch.Generator(device=device).manual_seed(seed)
