"""Where a run's arrays live (top-level `placement`), and getting one batch of them onto the
device.

`device`: every array (images, labels, the revealed map, region maps) is copied to the device
once and batches are indexed there. `host`: arrays stay in host memory (the memory-mapped
decode cache) as `Streamed`; each batch is read from it, on a GPU through pinned memory on a
side CUDA stream, while a background thread already reads the next one (its copy overlaps the
current batch's compute). `auto` keeps them on the device when they fit in
`placement_fraction` of its free memory. The values are the same either way: only where the
bytes wait changes, never which batches are drawn nor their content.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from alseg.device import upload
from alseg.errors import AlsegError

log = logging.getLogger(__name__)

Index = torch.Tensor | slice  # image indices of one batch (a CPU tensor, or a slice)


class Streamed:
    """An array [N, ...] left in host memory and read batch by batch (see `batches`)."""

    def __init__(self, array: np.ndarray, device: torch.device) -> None:
        self.array, self.device = array, torch.device(device)

    def __len__(self) -> int:
        return len(self.array)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.array.shape

    def __getitem__(self, index: Index) -> torch.Tensor:
        """The rows `index` on the device, read now (code that reads a few batches outside the
        prefetching `batches`: sieving, prototypes, adaptive merging)."""
        return self.read(index.cpu() if isinstance(index, torch.Tensor) else index, None)

    def read(self, index: Index, stream: torch.cuda.Stream | None) -> torch.Tensor:
        """The rows `index` on the device; on a GPU copied through pinned memory on `stream`."""
        rows = self.array[index.numpy() if isinstance(index, torch.Tensor) else index]
        host = torch.from_numpy(np.ascontiguousarray(rows))
        if stream is None:
            return host.to(self.device)
        with torch.cuda.stream(stream):
            return host.pin_memory().to(self.device, non_blocking=True)


Source = torch.Tensor | Streamed | None  # resident on the device, streamed, or absent (None)


@dataclass(frozen=True)
class Placement:
    """Where a run keeps its arrays: `resident` on `device`, or streamed from host memory."""

    device: torch.device
    resident: bool

    def put(self, array: np.ndarray) -> torch.Tensor | Streamed:
        """`array` as this placement holds it: copied to the device, or left where it is."""
        if self.resident:
            return torch.from_numpy(np.asarray(array)).to(self.device)
        return Streamed(array, self.device)


def is_streamed(source: Source) -> bool:
    return isinstance(source, Streamed)


def host_view(source: torch.Tensor | Streamed) -> torch.Tensor | np.ndarray:
    """The whole array where it lives (the device tensor, or the host array), for reductions
    that `torch` and `numpy` write alike."""
    return source.array if isinstance(source, Streamed) else source


def batches(sources: Sequence[Source], indices: Sequence[Index]) -> Iterator[list[torch.Tensor | None]]:
    """Each batch of `indices` as one tensor per source (None for a None source), on the device.
    Resident sources are indexed on the device (tensor indices uploaded in one copy); streamed
    ones are read by a background thread one batch ahead, on a side CUDA stream on a GPU."""
    indices = list(indices)
    resident = [s for s in sources if isinstance(s, torch.Tensor)]
    on_device = _indices_on(resident[0].device, indices) if resident else indices
    streamed = [i for i, s in enumerate(sources) if isinstance(s, Streamed)]
    if not streamed:
        for index in on_device:
            yield [None if s is None else s[index] for s in sources]
        return
    device = sources[streamed[0]].device
    stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def read(k: int) -> tuple[dict[int, torch.Tensor], torch.cuda.Event | None]:
        out = {i: sources[i].read(indices[k], stream) for i in streamed}
        return out, (stream.record_event() if stream is not None else None)

    with ThreadPoolExecutor(1, thread_name_prefix="alseg-prefetch") as reader:
        pending = reader.submit(read, 0) if indices else None
        for k, index in enumerate(on_device):
            ready, event = pending.result()
            pending = reader.submit(read, k + 1) if k + 1 < len(indices) else None
            if event is not None:
                torch.cuda.current_stream(device).wait_event(event)
                for tensor in ready.values():
                    tensor.record_stream(torch.cuda.current_stream(device))  # not reused before compute ends
            yield [ready[i] if i in ready else (None if s is None else s[index]) for i, s in enumerate(sources)]


def _indices_on(device: torch.device, indices: list[Index]) -> list[Index]:
    """Tensor indices on `device` in one copy (one per batch would make a GPU wait each step)."""
    if device.type != "cuda" or not indices or not all(isinstance(i, torch.Tensor) for i in indices):
        return indices
    return list(upload(torch.cat(indices), device).split([len(i) for i in indices]))


def data_bytes(arrays: Sequence[np.ndarray | None]) -> int:
    """Bytes the arrays take on the device (a broadcast array, stride 0, counts once)."""
    return sum(a[0].nbytes if a.strides[0] == 0 else a.nbytes for a in arrays if a is not None)


def free_memory(device: torch.device) -> int:
    """Free bytes on `device`: the GPU's free memory, or the host's available memory."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def choose_placement(name: str, fraction: float, needed: int, device: torch.device) -> Placement:
    """The placement for `placement=name` (auto | device | host) of `needed` bytes, logged
    with the reason; placement=device of more than a GPU's free memory is an AlsegError."""
    if name == "auto":
        free = free_memory(device)
        resident = needed <= fraction * free
        why = (f"the data ({_gb(needed)}) {'fits' if resident else 'does not fit'} in placement_fraction="
               f"{fraction:g} of the {_gb(free)} free on {device}")
    else:
        resident = name == "device"
        why = f"placement={name}; the data takes {_gb(needed)}"
        if resident and device.type == "cuda" and needed > free_memory(device):
            raise AlsegError(f"placement=device: the data ({_gb(needed)}) does not fit in the {_gb(free_memory(device))} "
                             f"free on {device}; use placement=auto or placement=host to stream it from host memory")
    log.info("placement: %s (%s)%s", "device" if resident else "host", why,
             "" if resident else ": batches are streamed from host memory")
    return Placement(torch.device(device), resident)


def _gb(size: int) -> str:
    return f"{size / 1e9:.2f} GB"
