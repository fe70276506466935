"""Token generation over the model and the prefix KV cache.

`Engine.start` makes a `Generation`, whose `step` feeds pending tokens through the model and
picks the next token. Only printable ASCII (ids 32..126) can be picked, because random weights
would otherwise produce invalid UTF-8, and exactly `max_tokens` tokens are produced (no EOS
stop). `step` is blocking work (on the model's device: CPU or CUDA) and not thread-safe:
callers run it in a worker thread and let one generation use the model at a time. Sampling draws
from a CPU generator whatever the device, so a seed gives the same tokens run after run.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import DynamicCache, GPT2LMHeadModel

from examples.refserver.kvcache import CacheHit, PrefixKVCache

__all__ = ["PRINTABLE_FIRST", "PRINTABLE_LAST", "Engine", "Generation"]

PRINTABLE_FIRST = 32
PRINTABLE_LAST = 126


class Engine:
    """A model plus its prefix KV cache."""

    def __init__(self, model: GPT2LMHeadModel, cache: PrefixKVCache) -> None:
        self.model = model
        self.cache = cache
        self.n_positions: int = model.config.n_positions
        self.device: torch.device = next(model.parameters()).device
        self.logit_mask = torch.full((model.config.vocab_size,), float("-inf"), device=self.device)
        self.logit_mask[PRINTABLE_FIRST : PRINTABLE_LAST + 1] = 0.0

    def start(
        self,
        prompt: Sequence[int],
        max_tokens: int,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> Generation:
        """Begin generating `max_tokens` tokens after `prompt`, reusing cached keys/values."""
        if not prompt:
            raise ValueError("prompt must hold at least one token")
        if max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if len(prompt) + max_tokens > self.n_positions:
            raise ValueError(
                f"{len(prompt)} prompt tokens + {max_tokens} max_tokens exceed the"
                f" {self.n_positions}-token context"
            )
        return Generation(
            self, list(prompt), max_tokens, temperature, seed, self.cache.lookup(prompt)
        )


class Generation:
    """One request's generation; call `step` `max_tokens` times."""

    def __init__(
        self,
        engine: Engine,
        prompt: list[int],
        max_tokens: int,
        temperature: float,
        seed: int | None,
        hit: CacheHit,
    ) -> None:
        self.engine = engine
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.prompt_tokens = len(prompt)
        self.cached_tokens = hit.tokens
        self.tokens: list[int] = []
        self._hit = hit
        self._fed = prompt[: hit.tokens]
        self._pending = prompt[hit.tokens :]
        self._past: DynamicCache | None = None
        self._rng = torch.Generator()
        if seed is None:
            self._rng.seed()
        else:
            self._rng.manual_seed(seed)

    @property
    def done(self) -> bool:
        """Whether all `max_tokens` tokens have been produced."""
        return len(self.tokens) >= self.max_tokens

    @torch.inference_mode()
    def step(self) -> int:
        """Feed the pending tokens, pick and return the next one; store the KV cache at the end."""
        if self.done:
            raise RuntimeError("generation already produced max_tokens tokens")
        if self._past is None:
            self._past = self._hit.to_dynamic_cache()
        out = self.engine.model(
            input_ids=torch.tensor([self._pending], device=self.engine.device),
            cache=self._past,
            use_cache=True,
            logits_to_keep=1,  # only the last position's logits: a long prompt needs no more
        )
        self._fed.extend(self._pending)
        logits = out.logits[0, -1] + self.engine.logit_mask
        if self.temperature > 0:
            probs = torch.softmax(logits / self.temperature, dim=-1)
            token = int(torch.multinomial(probs.cpu(), 1, generator=self._rng))
        else:
            token = int(torch.argmax(logits))
        self.tokens.append(token)
        self._pending = [token]
        if self.done:
            self.engine.cache.store(self._fed, self._past)
        return token
