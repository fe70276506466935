"""Reference LLM server pieces in-process: tokenizer, weights file, prefix KV cache, engine."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from examples.refserver import (
    EOS_ID,
    Engine,
    PrefixKVCache,
    StreamDecoder,
    decode,
    encode,
    ensure_weights,
    load_model,
)
from examples.refserver.model import weights_path

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("refserver-state")


@pytest.fixture(scope="module")
def model(model_dir: Path) -> torch.nn.Module:
    return load_model(model_dir, "tiny", seed=0)


def test_tokenizer_round_trip_and_streaming_decode_of_multibyte_text() -> None:
    text = "hé € 𝄞!"
    ids = encode(text)
    assert ids == list(text.encode("utf-8"))
    assert decode([*ids, EOS_ID]) == text

    decoder = StreamDecoder()
    pieces = [decoder.feed(i) for i in ids]
    assert "".join(pieces) == text
    # "€" is 3 bytes: nothing comes out until its last byte arrives.
    euro = encode("€")
    split = StreamDecoder()
    assert [split.feed(b) for b in euro] == ["", "", "€"]
    truncated = StreamDecoder()
    assert truncated.feed(euro[0]) == ""
    assert truncated.feed(euro[1], final=True) == "\ufffd"


def test_weights_are_generated_once_and_load_identically(tmp_path: Path) -> None:
    path = ensure_weights(tmp_path, "tiny", seed=3)
    assert path == weights_path(tmp_path, "tiny", 3)
    before = path.stat()
    assert ensure_weights(tmp_path, "tiny", seed=3).stat().st_mtime_ns == before.st_mtime_ns
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind

    first, second = load_model(tmp_path, "tiny", seed=3), load_model(tmp_path, "tiny", seed=3)
    assert path.stat().st_ino == before.st_ino
    for (name, a), (_, b) in zip(
        first.state_dict().items(), second.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert first.lm_head.weight is first.transformer.wte.weight
    other = load_model(tmp_path, "tiny", seed=4)
    assert not torch.equal(other.transformer.wte.weight, first.transformer.wte.weight)


def test_parameters_are_views_of_the_memory_mapped_weights_file(model_dir: Path, model) -> None:
    path = str(weights_path(model_dir, "tiny", 0))
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        if fields[-1] == path:
            start, end = (int(x, 16) for x in fields[0].split("-"))
            ranges.append((start, end, fields[1]))
    assert ranges, "weights file is not mapped"
    assert all(perms.endswith("p") for _, _, perms in ranges)  # private (copy-on-write)
    for name, param in model.named_parameters():
        assert any(s <= param.data_ptr() < e for s, e, _ in ranges), name


def _fake_cache(length: int) -> DynamicCache:
    cache = DynamicCache()
    for layer in range(2):
        cache.update(torch.randn(1, 2, length, 4), torch.randn(1, 2, length, 4), layer)
    return cache


def _kv(cache: DynamicCache, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    entry = cache.layers[layer]
    assert isinstance(entry, DynamicLayer) and entry.keys is not None and entry.values is not None
    return entry.keys, entry.values


def test_prefix_cache_lookup_uses_longest_common_prefix_but_leaves_one_token() -> None:
    cache = PrefixKVCache()
    stored = _fake_cache(6)
    cache.store([1, 2, 3, 4, 5, 6], stored)
    assert cache.lookup([9, 9]).tokens == 0
    assert cache.lookup([1, 2, 3, 7, 8]).tokens == 3
    assert cache.lookup([1, 2, 3, 4, 5, 6]).tokens == 5
    hit = cache.lookup([1, 2, 3, 4, 5, 6, 7, 8])
    assert hit.tokens == 6
    rebuilt = hit.to_dynamic_cache()
    assert rebuilt.get_seq_length() == 6
    assert torch.equal(_kv(rebuilt, 1)[0], _kv(stored, 1)[0])
    partial = cache.lookup([1, 2, 9]).to_dynamic_cache()
    assert torch.equal(_kv(partial, 0)[1], _kv(stored, 0)[1][:, :, :2])


def test_prefix_cache_is_bounded_lru_and_drops_covered_prefixes() -> None:
    cache = PrefixKVCache(max_entries=2, max_tokens=10)
    cache.store([1, 2], _fake_cache(2))
    cache.store([1, 2, 3], _fake_cache(3))  # covers [1, 2]
    assert len(cache) == 1 and cache.total_tokens == 3
    cache.store([1, 2], _fake_cache(2))  # already covered: nothing new
    assert len(cache) == 1
    cache.store([4, 5, 6], _fake_cache(3))
    cache.lookup([1, 2, 3, 0])  # [1, 2, 3] is now the most recently used
    cache.store([7, 8], _fake_cache(2))  # 3 entries > 2: evicts [4, 5, 6]
    assert cache.lookup([4, 5, 6, 0]).tokens == 0
    assert cache.lookup([1, 2, 3, 0]).tokens == 3
    cache.store([9] * 7, _fake_cache(7))  # 2 + 7 + 3 > 10 tokens: evicts until it fits
    assert cache.total_tokens <= 10
    cache.store([0] * 11, _fake_cache(11))  # larger than the whole cache: not kept
    assert cache.lookup([0] * 12).tokens == 0


@torch.inference_mode()
def test_cached_and_uncached_next_token_logits_match(model) -> None:
    prompt = encode("The quick brown fox jumps over the lazy dog. " * 4)
    full = model(torch.tensor([prompt])).logits[0, -1]

    cache = PrefixKVCache()
    split = len(prompt) - 20
    past = DynamicCache()
    model(torch.tensor([prompt[:split]]), cache=past, use_cache=True)
    cache.store(prompt[:split], past)
    hit = cache.lookup(prompt)
    assert hit.tokens == split
    out = model(torch.tensor([prompt[split:]]), cache=hit.to_dynamic_cache())
    torch.testing.assert_close(out.logits[0, -1], full, atol=1e-5, rtol=1e-5)


def test_engine_output_is_the_same_with_and_without_the_prefix_cache(model) -> None:
    cached, uncached = Engine(model, PrefixKVCache()), Engine(model, PrefixKVCache(max_entries=0))

    def run(engine: Engine, prompt: str, max_tokens: int) -> tuple[list[int], int]:
        generation = engine.start(encode(prompt), max_tokens)
        while not generation.done:
            generation.step()
        return generation.tokens, generation.cached_tokens

    base = "Once upon a time, in a land far away, " * 3
    assert run(cached, base, 10)[1] == 0
    tokens, hit = run(cached, base + "there lived a dragon.", 30)
    assert hit >= len(encode(base))
    assert (tokens, 0) == run(uncached, base + "there lived a dragon.", 30)
    assert all(32 <= t <= 126 for t in tokens)


def test_engine_sampling_is_reproducible_with_a_seed_and_validates_lengths(model) -> None:
    engine = Engine(model, PrefixKVCache(max_entries=0))
    prompt = encode("Sampling test prompt")
    runs = []
    for _ in range(2):
        generation = engine.start(prompt, 20, temperature=1.0, seed=5)
        while not generation.done:
            generation.step()
        runs.append(generation.tokens)
    assert runs[0] == runs[1]
    assert all(32 <= t <= 126 for t in runs[0])
    with pytest.raises(ValueError, match="context"):
        engine.start(encode("x" * 500), 100)
    with pytest.raises(ValueError, match="max_tokens"):
        engine.start(prompt, 0)
    with pytest.raises(ValueError, match="prompt"):
        engine.start([], 5)
