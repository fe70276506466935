"""Prometheus metrics, one registry per app (so tests can build many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from activator.states import State

__all__ = ["Metrics"]

_WAKE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)


class Metrics:
    """Everything the activator counts."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.state = Gauge(
            "dormant_workload_state",
            "1 for the state the workload is in",
            ["workload", "state"],
            registry=r,
        )
        self.requests = Counter(
            "dormant_requests_total",
            "Proxied requests by outcome",
            ["workload", "outcome"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "dormant_queue_depth", "Requests waiting for a wake", ["workload"], registry=r
        )
        self.in_flight = Gauge(
            "dormant_in_flight", "Requests being served", ["workload"], registry=r
        )
        self.wake_seconds = Histogram(
            "dormant_wake_seconds",
            "Time to ready, by path",
            ["workload", "path"],
            buckets=_WAKE_BUCKETS,
            registry=r,
        )
        self.checkpoint_seconds = Histogram(
            "dormant_checkpoint_seconds",
            "Checkpoint duration",
            ["workload"],
            buckets=_WAKE_BUCKETS,
            registry=r,
        )
        self.snapshot_bytes = Gauge(
            "dormant_snapshot_bytes", "Size of the latest snapshot", ["workload"], registry=r
        )
        self.ttfb_seconds = Histogram(
            "dormant_proxy_ttfb_seconds",
            "Forward to upstream response headers",
            ["workload"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.websockets = Gauge(
            "dormant_websockets_open", "Proxied WebSocket connections", ["workload"], registry=r
        )
        self.transitions = Counter(
            "dormant_transitions_total",
            "State transitions",
            ["workload", "from_state", "to_state"],
            registry=r,
        )
        # The warm pool: swaps between tiers, device memory, thrash.
        self.swaps = Counter(
            "dormant_swaps_total",
            "Moves between tiers (resident, suspended, hibernated, cold) by the engine used",
            ["workload", "from", "to", "engine"],
            registry=r,
        )
        self.swap_seconds = Histogram(
            "dormant_swap_seconds",
            "Duration of one swap, by engine and direction (out: off the device; in: onto it)",
            ["engine", "direction"],
            buckets=_WAKE_BUCKETS,
            registry=r,
        )
        self.device_memory = Gauge(
            "dormant_device_memory_bytes",
            "Device memory a workload holds (measured, or declared where unmeasurable)",
            ["workload"],
            registry=r,
        )
        self.pool_used = Gauge(
            "dormant_pool_used_bytes",
            "Device memory the pool's resident workloads hold",
            registry=r,
        )
        self.pool_budget = Gauge(
            "dormant_pool_budget_bytes",
            "Device memory the pool may use (budget minus reserve)",
            registry=r,
        )
        self.thrash = Counter(
            "dormant_thrash_total",
            "Swaps back onto the device of a workload swapped out while in use (past max_defer), "
            "or back within its own min_resident",
            ["workload"],
            registry=r,
        )

    def set_state(self, workload: str, state: State) -> None:
        for s in State:
            self.state.labels(workload, s.value).set(1 if s is state else 0)

    def record_swap(
        self, workload: str, from_tier: str, to_tier: str, engine: str, seconds: float
    ) -> None:
        """Count one swap and its duration; ``direction`` is 'in' when it lands resident."""
        self.swaps.labels(workload, from_tier, to_tier, engine).inc()
        direction = "in" if to_tier == "resident" else "out"
        self.swap_seconds.labels(engine, direction).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
