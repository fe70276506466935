"""The load scenarios and the choices they make: which model each request asks for.

``warm``: steady load on one model. ``wake``: hibernate the model's workload, then every
user fires at once; their first requests are the wake-from-zero burst. ``churn``: each
request picks a model from several, Zipf-distributed (the first name is the most popular),
so rarely used models go idle and get woken. ``notebook``: execute code on a Jupyter kernel
over its WebSocket after the notebook workload was hibernated.
"""

from __future__ import annotations

import random
from bisect import bisect_left
from itertools import accumulate

__all__ = ["SCENARIOS", "ZipfPicker", "parse_models"]

SCENARIOS: dict[str, str] = {
    "warm": "steady load on the first model",
    "wake": "hibernate the workload, then all users fire at once (TTFT-wake)",
    "churn": "Zipf-distributed choice over all models given by --model",
    "notebook": "Jupyter kernel execute over WebSocket after hibernation",
}


def parse_models(value: str) -> list[str]:
    """``'a, b,c'`` -> ``['a', 'b', 'c']``; raises ValueError when empty."""
    models = [m.strip() for m in value.split(",") if m.strip()]
    if not models:
        raise ValueError("--model needs at least one model name")
    return models


class ZipfPicker:
    """Picks items with probability proportional to 1 / rank**s (rank 1 = the first item)."""

    def __init__(self, items: list[str], s: float, rng: random.Random | None = None) -> None:
        if not items:
            raise ValueError("ZipfPicker needs at least one item")
        if s < 0:
            raise ValueError(f"Zipf exponent must be >= 0 (got {s})")
        self.items = list(items)
        self.weights = [1.0 / rank**s for rank in range(1, len(items) + 1)]
        self._cumulative = list(accumulate(self.weights))
        self._rng = rng or random.Random()

    def probabilities(self) -> dict[str, float]:
        total = self._cumulative[-1]
        return {item: w / total for item, w in zip(self.items, self.weights, strict=True)}

    def pick(self) -> str:
        point = self._rng.random() * self._cumulative[-1]
        return self.items[min(bisect_left(self._cumulative, point), len(self.items) - 1)]
