"""How much the pool bench measures (``python -m loadtests.pool_bench``'s options, as one
value): apart from the bench's command line and its parts, which both read it."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

__all__ = ["Plan"]


@dataclass(frozen=True)
class Plan:
    """How much to measure."""

    size: str
    users: int
    requests: int
    zipf_s: float
    seed: int
    holds: tuple[int, ...]
    swap_samples: int
    max_tokens: int
    prompt_length: int
    max_seconds: float
    budget: int | None
    engines: tuple[str, ...]

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Plan:
        quick = args.quick
        return cls(
            size=args.size or ("tiny" if quick else "small"),
            users=args.users,
            requests=args.requests or (24 if quick else 60),
            zipf_s=args.zipf_s,
            seed=args.seed,
            holds=tuple(args.hold if args.hold is not None else ([0] if quick else [0, 512 << 20])),
            swap_samples=args.swap_samples or (2 if quick else 3),
            max_tokens=args.max_tokens or (8 if quick else 16),
            prompt_length=args.prompt_length,
            max_seconds=args.max_seconds,
            budget=args.budget,
            engines=tuple(args.engines),
        )
