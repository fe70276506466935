"""Prefix KV cache: reuse the attention keys/values of token sequences already fed.

Each entry maps the token ids fed through the model to per-layer (keys, values) tensors of
shape [batch, heads, seq, head_dim]. A lookup finds the entry sharing the longest common
prefix with a new prompt, capped at len(prompt) - 1 tokens so at least one token is still fed
to get next-token logits, and rebuilds a `DynamicCache` from the sliced tensors. Entries are
evicted least-recently-used first, bounded by entry count and by total cached tokens.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

__all__ = ["MISS", "CacheHit", "Layers", "PrefixKVCache"]

Layers = tuple[tuple[torch.Tensor, torch.Tensor], ...]


@dataclass(frozen=True)
class CacheHit:
    """The first `tokens` positions of the keys/values in `layers` match the prompt."""

    tokens: int
    layers: Layers

    def to_dynamic_cache(self) -> DynamicCache:
        """Return a fresh DynamicCache holding the first `tokens` positions (empty on a miss)."""
        cache = DynamicCache()
        if self.tokens:
            n = self.tokens
            for layer_idx, (keys, values) in enumerate(self.layers):
                cache.update(keys[:, :, :n], values[:, :, :n], layer_idx)
        return cache


MISS = CacheHit(tokens=0, layers=())


@dataclass(frozen=True)
class _Entry:
    ids: np.ndarray
    layers: Layers


def _common_prefix_len(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    mismatches = np.flatnonzero(a[:n] != b[:n])
    return int(mismatches[0]) if mismatches.size else n


def _cloned_kv(layer: object) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(layer, DynamicLayer) or layer.keys is None or layer.values is None:
        raise TypeError(f"expected a filled DynamicLayer, got {type(layer).__name__}")
    return layer.keys.clone(), layer.values.clone()


class PrefixKVCache:
    """Thread-safe LRU cache of KV tensors keyed by the token ids they were computed from."""

    def __init__(self, max_entries: int = 64, max_tokens: int = 65536) -> None:
        self.max_entries = max_entries
        self.max_tokens = max_tokens
        self._entries: OrderedDict[tuple[int, ...], _Entry] = OrderedDict()
        self._total_tokens = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def total_tokens(self) -> int:
        """Tokens held over all entries."""
        return self._total_tokens

    @property
    def nbytes(self) -> int:
        """Bytes of the keys/values held over all entries."""
        with self._lock:
            return sum(
                t.numel() * t.element_size()
                for entry in self._entries.values()
                for kv in entry.layers
                for t in kv
            )

    def tensors(self) -> list[torch.Tensor]:
        """Every key/value tensor held, in a fixed order (entries, then layers, keys first)."""
        with self._lock:
            return [t for entry in self._entries.values() for kv in entry.layers for t in kv]

    def replace_tensors(self, tensors: Sequence[torch.Tensor]) -> None:
        """Put `tensors` in place of those `tensors()` returned, in the same order (moving the
        cache between devices keeps its entries)."""
        with self._lock:
            count = sum(2 * len(entry.layers) for entry in self._entries.values())
            if len(tensors) != count:
                raise ValueError(f"expected {count} tensors, got {len(tensors)}")
            it = iter(tensors)
            for key, entry in self._entries.items():
                layers = tuple((next(it), next(it)) for _ in entry.layers)
                self._entries[key] = _Entry(ids=entry.ids, layers=layers)

    def clear(self) -> None:
        """Forget every entry."""
        with self._lock:
            self._entries.clear()
            self._total_tokens = 0

    def lookup(self, prompt: Sequence[int]) -> CacheHit:
        """Return the longest cached prefix of `prompt`, leaving at least one token to feed."""
        ids = np.asarray(prompt, dtype=np.int64)
        limit = len(ids) - 1
        best_key: tuple[int, ...] | None = None
        best_len = 0
        with self._lock:
            for key, entry in self._entries.items():
                n = min(_common_prefix_len(entry.ids, ids), limit)
                if n > best_len:
                    best_key, best_len = key, n
            if best_key is None:
                return MISS
            self._entries.move_to_end(best_key)
            return CacheHit(tokens=best_len, layers=self._entries[best_key].layers)

    def store(self, tokens: Sequence[int], cache: DynamicCache) -> None:
        """Remember the keys/values `cache` holds for the fed sequence `tokens`."""
        key = tuple(tokens)
        if not key or len(key) > self.max_tokens or self.max_entries < 1:
            return
        if cache.get_seq_length() != len(key):
            raise ValueError(f"cache holds {cache.get_seq_length()} tokens, expected {len(key)}")
        ids = np.asarray(key, dtype=np.int64)
        with self._lock:
            for old_key, entry in self._entries.items():
                if _common_prefix_len(entry.ids, ids) == len(key):  # already covered
                    self._entries.move_to_end(old_key)
                    return
        layers = tuple(_cloned_kv(layer) for layer in cache.layers)
        with self._lock:
            covered = [
                old_key
                for old_key, entry in self._entries.items()
                if _common_prefix_len(entry.ids, ids) == len(old_key)
            ]
            for old_key in covered:  # a prefix of the new entry: the new one serves its hits
                del self._entries[old_key]
                self._total_tokens -= len(old_key)
            self._entries[key] = _Entry(ids=ids, layers=layers)
            self._total_tokens += len(key)
            while len(self._entries) > self.max_entries or self._total_tokens > self.max_tokens:
                old_key, _ = self._entries.popitem(last=False)
                self._total_tokens -= len(old_key)
