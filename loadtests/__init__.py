"""Load tests for Dormant: a pure OpenAI-compatible client (Locust users, SLO gates, bench)."""
