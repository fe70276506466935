"""Size parsing for device.memory_budget, device.reserve and a workload's memory."""

from __future__ import annotations

import pytest

from warmpool.units import format_size, parse_size


@pytest.mark.parametrize(
    ("text", "size"),
    [
        (0, 0),
        (4096, 4096),
        ("4096", 4096),
        ("6GiB", 6 << 30),
        ("6gib", 6 << 30),
        ("900MiB", 900 << 20),
        ("900 MiB", 900 << 20),
        ("1.5GiB", 3 << 29),
        ("1.5GB", 1_500_000_000),
        ("2G", 2_000_000_000),
        ("512Ki", 512 << 10),
        ("1TiB", 1 << 40),
        ("10B", 10),
        (" 7 mb ", 7_000_000),
        (2.0, 2),
    ],
)
def test_parse_size(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("6 gigs", "unknown size unit 'gigs'"),
        ("lots", "expected a size like '6GiB'"),
        ("-1GiB", "expected a size like"),
        (-5, "cannot be negative"),
        ("1.5", "must be whole"),
        (True, "expected a size like"),
        (None, "expected a size like"),
        (1.5, "expected a size like"),
        ("", "expected a size like"),
        ("GiB", "expected a size like"),
    ],
)
def test_bad_sizes_say_what_was_expected(bad: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_size(bad)


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (None, "?"),
        (0, "0B"),
        (1023, "1023B"),
        (1536, "1.5KiB"),
        (6 << 30, "6.0GiB"),
        (3 << 40, "3.0TiB"),
    ],
)
def test_format_size(size: int | None, text: str) -> None:
    assert format_size(size) == text


def test_format_then_parse_round_trips_whole_units() -> None:
    for size in (1 << 20, 900 << 20, 6 << 30):
        assert parse_size(format_size(size)) == size
