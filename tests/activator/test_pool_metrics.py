"""The warm pool's metrics render under their documented names."""

from __future__ import annotations

from activator.metrics import Metrics


def _value(text: str, sample: str) -> float:
    line = next(ln for ln in text.splitlines() if ln.startswith(sample + " "))
    return float(line.rsplit(" ", 1)[1])


def test_pool_metrics_render_with_their_labels() -> None:
    m = Metrics()
    m.record_swap("a", "resident", "suspended", "cuda", 0.8)
    m.record_swap("a", "suspended", "resident", "cuda", 0.3)
    m.record_swap("b", "resident", "hibernated", "criu", 2.0)
    m.device_memory.labels("a").set(5 << 30)
    m.pool_used.set(5 << 30)
    m.pool_budget.set(6 << 30)
    m.thrash.labels("a").inc()
    text = m.render().decode()
    swaps = 'dormant_swaps_total{engine="cuda",from="resident",to="suspended",workload="a"}'
    assert _value(text, swaps) == 1
    assert _value(text, 'dormant_swap_seconds_count{direction="in",engine="cuda"}') == 1
    assert _value(text, 'dormant_swap_seconds_sum{direction="out",engine="cuda"}') == 0.8
    assert _value(text, 'dormant_swap_seconds_count{direction="out",engine="criu"}') == 1
    assert _value(text, 'dormant_device_memory_bytes{workload="a"}') == 5 << 30
    assert _value(text, "dormant_pool_used_bytes") == 5 << 30
    assert _value(text, "dormant_pool_budget_bytes") == 6 << 30
    assert _value(text, 'dormant_thrash_total{workload="a"}') == 1
