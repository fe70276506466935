"""The reference server's sleep machinery in-process on CPU: sizes, the host arena, the KV
cache's tensor moves, and a `Residency` sleeping and waking a real (tiny) model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import DynamicCache

from examples.refserver import Engine, PrefixKVCache, encode, load_model
from examples.refserver.device import (
    DeviceUnavailable,
    format_size,
    hold_memory,
    parse_size,
    resolve_device,
)
from examples.refserver.hostarena import HostArena, _pieces
from examples.refserver.model import weights_path
from examples.refserver.residency import Residency

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize(
    ("text", "nbytes"),
    [
        ("0", 0),
        ("4096", 4096),
        ("64MiB", 64 << 20),
        ("40GiB", 40 << 30),
        ("1.5GiB", 3 << 29),
        ("512 mib", 512 << 20),
        ("2KB", 2000),
        ("7B", 7),
    ],
)
def test_sizes_parse(text: str, nbytes: int) -> None:
    assert parse_size(text) == nbytes


@pytest.mark.parametrize("text", ["", "-1", "1.5", "12 parsecs", "GiB", "1e9"])
def test_bad_sizes_are_refused_with_an_example(text: str) -> None:
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(text)


def test_sizes_format() -> None:
    assert [format_size(n) for n in (0, 1023, 64 << 20, 3 << 29)] == [
        "0B",
        "1023B",
        "64MiB",
        "1.5GiB",
    ]


def test_devices_resolve_and_cuda_is_refused_without_it() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="use cpu, cuda or cuda:N"):
        resolve_device("mps")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceUnavailable, match=r"torch.cuda.is_available\(\) is false"):
            resolve_device("cuda:0")


def test_arena_pieces_are_powers_of_two_summing_to_the_size() -> None:
    for n in (0, 1, 1000, (1 << 30) + 5, (3 << 30) + (1 << 29) + 12345):
        pieces = _pieces(n)
        assert sum(pieces) == n
        assert all(p & (p - 1) == 0 and p <= 1 << 30 for p in pieces)
        assert pieces == sorted(pieces, reverse=True)


def test_arena_round_trips_tensors_across_piece_boundaries() -> None:
    tensors = [
        torch.arange(25, dtype=torch.float32).reshape(5, 5),  # 100 bytes
        torch.tensor(3.5, dtype=torch.float64),  # 0-d
        torch.arange(77, dtype=torch.int16)[::2],  # not contiguous
        torch.empty(0, 4),
        torch.tensor([True, False, True]),
    ]
    arena = HostArena(HostArena.size_of(tensors), pin=False)
    assert len(arena._pieces) > 3  # an odd size: several pieces, tensors span them
    slots = [arena.put(t) for t in tensors]
    for t, slot in zip(tensors, slots, strict=True):
        back = arena.get(slot, torch.device("cpu"))
        assert back.dtype == t.dtype and back.shape == t.shape and torch.equal(back, t)
    with pytest.raises(ValueError, match="full"):
        arena.put(torch.zeros(1))


def test_held_memory_has_its_pattern_in_every_page() -> None:
    held = hold_memory(torch.device("cpu"), 3 * 4096 + 17)
    assert held.numel() == 3 * 4096 + 17
    assert int(held[5]) == 5 and int(held[4096 + 300]) == 300 % 251 and int(held[-1]) == 16


def _fake_cache(length: int) -> DynamicCache:
    cache = DynamicCache()
    for layer in range(2):
        cache.update(torch.randn(1, 2, length, 4), torch.randn(1, 2, length, 4), layer)
    return cache


def test_kv_cache_tensors_are_replaced_in_order_and_cleared() -> None:
    cache = PrefixKVCache()
    cache.store([1, 2, 3], _fake_cache(3))
    cache.store([7, 8], _fake_cache(2))
    tensors = cache.tensors()
    assert len(tensors) == 8 and cache.nbytes == sum(t.nbytes for t in tensors)
    cache.replace_tensors([t + 1 for t in tensors])
    hit = cache.lookup([1, 2, 3, 4])
    assert hit.tokens == 3 and torch.equal(hit.layers[0][0], tensors[0] + 1)
    with pytest.raises(ValueError, match="expected 8 tensors"):
        cache.replace_tensors(tensors[:-1])
    cache.clear()
    assert len(cache) == 0 and cache.total_tokens == 0 and cache.nbytes == 0
    assert cache.lookup([1, 2, 3, 4]).tokens == 0


def _mapped(path: Path, model: torch.nn.Module) -> bool:
    """Whether every parameter of `model` lies in a mapping of the file `path`."""
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        if fields[-1] == str(path):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            ranges.append((start, end))
    return all(any(s <= p.data_ptr() < e for s, e in ranges) for p in model.parameters())


def _generate(engine: Engine, prompt: str) -> tuple[list[int], int]:
    generation = engine.start(encode(prompt), 20)
    while not generation.done:
        generation.step()
    return generation.tokens, generation.cached_tokens


def test_residency_sleeps_and_wakes_a_model_at_both_levels(tmp_path: Path) -> None:
    model = load_model(tmp_path, "tiny", seed=0)
    path = weights_path(tmp_path, "tiny", 0)
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    cache = PrefixKVCache()
    engine = Engine(model, cache)
    residency = Residency(model, cache, torch.device("cpu"), path, held_bytes=10_000)
    prompt = "The residency test prompt, long enough to cache. " * 2
    uncached = _generate(engine, prompt)
    expected = _generate(engine, prompt)
    assert expected[1] > 0 and _mapped(path, model)

    residency.sleep(1)
    assert all(p.numel() == 0 for p in model.parameters())
    assert residency.held is None and all(t.numel() == 0 for t in cache.tensors())
    residency.wake()
    assert not residency.is_sleeping and residency.held_intact() is True
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied
    for name, param in model.named_parameters():
        assert torch.equal(param, original[name]), name
    assert not _mapped(path, model)  # level 1 on CPU: the weights are copies now
    assert _generate(engine, prompt) == expected

    residency.sleep(2)
    assert len(cache) == 0 and residency.memory()["host_bytes"]["weights"] == 0
    residency.wake(["weights"])
    assert residency.is_sleeping and residency.sleeping_tags == {"kv_cache"}
    residency.wake(["kv_cache"])
    assert not residency.is_sleeping and residency.level is None
    assert _mapped(path, model)  # level 2 reloads from the file mapping
    for name, param in model.named_parameters():
        assert torch.equal(param, original[name]), name
    assert residency.held_intact() is True
    assert _generate(engine, prompt) == uncached

    with pytest.raises(ValueError, match="level must be 1 or 2"):
        residency.sleep(3)
    with pytest.raises(ValueError, match="unknown tag"):
        residency.wake(["everything"])
