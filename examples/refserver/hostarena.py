"""Host RAM that tensors are parked in while the server sleeps.

A `HostArena` is one flat range of bytes, laid out in power-of-two pieces and pinned (page-locked)
when the tensors come from a CUDA device, so copies run at DMA speed. Powers of two because
PyTorch's pinned-memory allocator rounds every allocation up to one: a 40 GiB tensor asked for in
one piece would cost 64 GiB of host RAM. `put` copies a tensor's bytes in and returns a `Slot`;
`get` copies them back into a new tensor on a device. Copies from and to a CUDA device are
asynchronous: call `device.synchronize` before using the result or dropping the source.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import torch

__all__ = ["HostArena", "Slot"]

_MAX_PIECE = 1 << 30


@dataclass(frozen=True)
class Slot:
    """Where one tensor's bytes sit in an arena, and what tensor they make."""

    offset: int
    nbytes: int
    shape: torch.Size
    dtype: torch.dtype


def _pieces(nbytes: int) -> list[int]:
    """`nbytes` as a sum of powers of two no larger than 1 GiB, largest first."""
    sizes = [_MAX_PIECE] * (nbytes // _MAX_PIECE)
    rest = nbytes % _MAX_PIECE
    bit = _MAX_PIECE >> 1
    while rest:
        if rest & bit:
            sizes.append(bit)
            rest -= bit
        bit >>= 1
    return sizes


def _as_bytes(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8)


class HostArena:
    """`nbytes` of host RAM, pinned if `pin` and the machine allows it (see `pinned`)."""

    def __init__(self, nbytes: int, pin: bool) -> None:
        sizes = _pieces(nbytes)
        self.pinned = pin
        try:
            self._pieces = [torch.empty(n, dtype=torch.uint8, pin_memory=pin) for n in sizes]
        except RuntimeError:
            if not pin:
                raise
            # Page-locking can fail (locked-memory limits, little RAM): pageable still works.
            self.pinned = False
            self._pieces = [torch.empty(n, dtype=torch.uint8) for n in sizes]
        self._starts = [0]
        for piece in self._pieces:
            self._starts.append(self._starts[-1] + piece.numel())
        self.nbytes = nbytes
        self._used = 0

    @staticmethod
    def size_of(tensors: list[torch.Tensor]) -> int:
        """Bytes an arena needs to hold `tensors`."""
        return sum(t.numel() * t.element_size() for t in tensors)

    def _ranges(self, offset: int, nbytes: int) -> list[tuple[torch.Tensor, int, int]]:
        """(piece, start in piece, start in the range) for each piece the range covers."""
        out = []
        position, end = offset, offset + nbytes
        index = bisect.bisect_right(self._starts, position) - 1
        while position < end:
            piece = self._pieces[index]
            start = position - self._starts[index]
            length = min(piece.numel() - start, end - position)
            out.append((piece[start : start + length], position - offset, length))
            position += length
            index += 1
        return out

    def put(self, tensor: torch.Tensor) -> Slot:
        """Copy `tensor`'s bytes into the next free part of the arena."""
        data = _as_bytes(tensor)
        nbytes = data.numel()
        if self._used + nbytes > self.nbytes:
            raise ValueError(f"arena of {self.nbytes} bytes is full ({self._used} used)")
        slot = Slot(self._used, nbytes, tensor.shape, tensor.dtype)
        for part, at, length in self._ranges(slot.offset, nbytes):
            part.copy_(data[at : at + length], non_blocking=self.pinned)
        self._used += nbytes
        return slot

    def get(self, slot: Slot, device: torch.device) -> torch.Tensor:
        """A new tensor on `device` holding the bytes of `slot`."""
        out = torch.empty(slot.shape, dtype=slot.dtype, device=device)
        data = out.reshape(-1).view(torch.uint8)
        for part, at, length in self._ranges(slot.offset, slot.nbytes):
            data[at : at + length].copy_(part, non_blocking=self.pinned)
        return out
