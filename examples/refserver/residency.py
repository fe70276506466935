"""Sleep and wake: what vLLM's sleep mode does to device memory, for the reference server.

Two tags name what can sleep: `weights` (the model's parameters and buffers, plus the memory
held with --hold-device-memory) and `kv_cache` (the prefix KV cache).

- Level 1 copies both into host RAM (a `HostArena`, pinned on CUDA), frees the device copies and
  empties PyTorch's CUDA caching allocator, so the device memory goes back to the driver.
  Unlike vLLM, whose level 1 discards the KV cache, the reference server keeps it in host RAM and
  brings it back: a woken server answers a prompt-extending request from its cache, which is what
  Dormant's warm pool promises across a swap.
- Level 2 keeps only the model's buffers (as vLLM does): the weights are dropped and reloaded
  from the memory-mapped safetensors file on wake, the held memory is freed and allocated and
  filled again on wake, and the KV cache is emptied.

`wake(tags)` brings back the named tags (all by default) to the same device; the server sleeps
until every tag is awake. As in vLLM, sleeping while asleep and waking while awake do nothing,
and waking a tag that is not asleep does nothing.

On CPU the "device" and host RAM are the same memory, so level 1 frees nothing: the weights move
from their tensors (at first views of the memory-mapped file) into a separate host buffer and
back into new tensors, through the same code as on a GPU. After a level-1 round trip on CPU the
weights are therefore anonymous memory rather than file-backed pages (a CRIU snapshot then carries
them); a level-2 wake maps the file again. Level 2 on CPU does free memory: the held memory, the
KV cache and the weights' file pages.

A `Residency` is not safe to use from several threads at once: the server calls `sleep` and
`wake` holding its model lock, with no generation running.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from transformers import GPT2LMHeadModel

from examples.refserver.device import (
    checksum,
    hold_memory,
    release_cached_memory,
    synchronize,
)
from examples.refserver.hostarena import HostArena, Slot
from examples.refserver.kvcache import PrefixKVCache
from examples.refserver.model import mmap_safetensors

__all__ = ["KV_CACHE", "TAGS", "WEIGHTS", "Residency", "WakeFailed"]

WEIGHTS = "weights"
KV_CACHE = "kv_cache"
TAGS = (WEIGHTS, KV_CACHE)


class WakeFailed(Exception):
    """The device could not take the memory back (e.g. another process filled it); still asleep."""


def _nbytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class _Parked:
    """What one tag left in host RAM: the arena and where each tensor sits in it."""

    def __init__(self, arena: HostArena, slots: dict[str, Slot]) -> None:
        self.arena, self.slots = arena, slots

    def nbytes(self, prefix: str = "") -> int:
        return sum(s.nbytes for name, s in self.slots.items() if name.startswith(prefix))


class Residency:
    """The sleep state of a model, its KV cache and the memory held beside them on `device`."""

    def __init__(
        self,
        model: GPT2LMHeadModel,
        cache: PrefixKVCache,
        device: torch.device,
        weights_file: str | Path,
        held_bytes: int = 0,
    ) -> None:
        self.model, self.cache, self.device = model, cache, device
        self.weights_file = Path(weights_file)
        self._params = dict(model.named_parameters())  # tied weights appear once
        self._buffers = dict(model.named_buffers())
        self.held_bytes = held_bytes
        self.held: torch.Tensor | None = hold_memory(device, held_bytes) if held_bytes else None
        self._held_checksum = checksum(self.held) if self.held is not None else 0
        self.level: int | None = None
        self.sleeping_tags: set[str] = set()
        self._parked: dict[str, _Parked] = {}
        self._lock = threading.Lock()

    @property
    def is_sleeping(self) -> bool:
        """Whether any tag is asleep (inference needs all of them awake)."""
        return bool(self.sleeping_tags)

    @property
    def _pin(self) -> bool:
        return self.device.type == "cuda"

    def _empty(self, tensor: torch.Tensor) -> torch.Tensor:
        return torch.empty(0, dtype=tensor.dtype, device=self.device)

    @torch.no_grad()
    def sleep(self, level: int) -> None:
        """Move (level 1) or drop (level 2) the weights, held memory and KV cache; see the module
        docstring. Nothing changes if host RAM cannot be had (the error propagates)."""
        if level not in (1, 2):
            raise ValueError(f"sleep level must be 1 or 2, not {level}")
        with self._lock:
            if self.sleeping_tags:
                return
            weights: dict[str, torch.Tensor] = {f"buffer:{n}": b for n, b in self._buffers.items()}
            if level == 1:
                weights.update({f"param:{n}": p for n, p in self._params.items()})
                if self.held is not None:
                    weights["held"] = self.held
            kv = dict(enumerate(self.cache.tensors())) if level == 1 else {}
            parked = {
                WEIGHTS: self._park(weights),
                KV_CACHE: self._park({str(i): t for i, t in kv.items()}),
            }
            synchronize(self.device)  # the copies are done before the device copies go
            for param in self._params.values():
                param.data = self._empty(param)
            for buffer in self._buffers.values():
                buffer.data = self._empty(buffer)
            self.held = None
            if level == 1:
                self.cache.replace_tensors([self._empty(t) for t in kv.values()])
            else:
                self.cache.clear()
            release_cached_memory(self.device)
            self._parked = parked
            self.level = level
            self.sleeping_tags = set(TAGS)

    def _park(self, tensors: dict[str, torch.Tensor]) -> _Parked:
        arena = HostArena(HostArena.size_of(list(tensors.values())), pin=self._pin)
        return _Parked(arena, {name: arena.put(t) for name, t in tensors.items()})

    @torch.no_grad()
    def wake(self, tags: Iterable[str] | None = None) -> None:
        """Bring back `tags` (default: all asleep) onto the device. WakeFailed when the device has
        no room for them: then nothing changed and the server still sleeps."""
        wanted = set(TAGS if tags is None else tags)
        unknown = wanted - set(TAGS)
        if unknown:
            raise ValueError(f"unknown tag(s) {sorted(unknown)}; tags are {list(TAGS)}")
        with self._lock:
            if not self.sleeping_tags or not wanted:
                return
            if tags is None:
                wanted = set(self.sleeping_tags)
            elif not wanted <= self.sleeping_tags:
                return  # vLLM: a tag that is not asleep makes wake_up do nothing
            try:
                restored = self._restore(wanted)
                synchronize(self.device)
            except torch.OutOfMemoryError as exc:
                release_cached_memory(self.device)
                raise WakeFailed(
                    f"cannot wake {sorted(wanted)} on {self.device}: the device is out of memory"
                    f" ({exc}); free device memory (another process may hold it) and wake again"
                ) from exc
            self._apply(wanted, restored)
            for tag in wanted:
                del self._parked[tag]
            self.sleeping_tags -= wanted
            if not self.sleeping_tags:
                self.level = None
            release_cached_memory(self.device)

    def _restore(self, tags: set[str]) -> dict[str, torch.Tensor]:
        """New device tensors for `tags`, assigned to nothing yet (so a failure changes nothing)."""
        out: dict[str, torch.Tensor] = {}
        for tag in tags:
            parked = self._parked[tag]
            for name, slot in parked.slots.items():
                out[f"{tag}/{name}"] = parked.arena.get(slot, self.device)
        if WEIGHTS in tags and self.level == 2:
            on_file = mmap_safetensors(self.weights_file)
            missing = sorted(set(self._params) - set(on_file))
            if missing:
                raise RuntimeError(f"{self.weights_file} lacks {missing}: cannot reload weights")
            for name in self._params:
                tensor = on_file[name]
                # On CPU the parameters become views of the file mapping again, as at start.
                out[f"{WEIGHTS}/param:{name}"] = tensor.to(self.device)
            if self.held_bytes:
                out[f"{WEIGHTS}/held"] = hold_memory(self.device, self.held_bytes)
        return out

    def _apply(self, tags: set[str], restored: dict[str, torch.Tensor]) -> None:
        if WEIGHTS in tags:
            for name, param in self._params.items():
                param.data = restored[f"{WEIGHTS}/param:{name}"]
            for name, buffer in self._buffers.items():
                buffer.data = restored[f"{WEIGHTS}/buffer:{name}"]
            self.held = restored.get(f"{WEIGHTS}/held")
        if KV_CACHE in tags:
            kv = [restored[f"{KV_CACHE}/{i}"] for i in range(len(self._parked[KV_CACHE].slots))]
            if kv:
                self.cache.replace_tensors(kv)

    def held_intact(self) -> bool | None:
        """Whether the held memory still has the bytes written at start (None: none held now)."""
        with self._lock:
            held = self.held
            return None if held is None else checksum(held) == self._held_checksum

    def memory(self) -> dict[str, Any]:
        """Bytes on the device and parked in host RAM, by tag, and the sleep state."""
        with self._lock:
            params = [*self._params.values(), *self._buffers.values()]
            weights_parked = self._parked.get(WEIGHTS)
            kv_parked = self._parked.get(KV_CACHE)
            host = {
                "weights": weights_parked.nbytes("param:") + weights_parked.nbytes("buffer:")
                if weights_parked
                else 0,
                "held": weights_parked.nbytes("held") if weights_parked else 0,
                "kv_cache": kv_parked.nbytes() if kv_parked else 0,
            }
            return {
                "device": str(self.device),
                "is_sleeping": self.is_sleeping,
                "level": self.level,
                "sleeping_tags": sorted(self.sleeping_tags),
                "device_bytes": {
                    "weights": _nbytes(params),
                    "held": self.held.nbytes if self.held is not None else 0,
                    "kv_cache": self.cache.nbytes,
                },
                "host_bytes": host,
                "host_pinned": any(p.arena.pinned for p in self._parked.values()),
            }
