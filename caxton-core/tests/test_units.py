"""Durations, sizes and addresses as config files and flags write them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from caxton.units import format_address, format_size, parse_address, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("200ms", 0.2),
        ("5s", 5.0),
        ("1s", 1.0),
        ("500ms", 0.5),
        ("1.5s", 1.5),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("250us", 0.00025),
        ("250µs", 0.00025),
        (" 10s ", 10.0),
        ("30", 30.0),
        (7, 7.0),
        (0.25, 0.25),
    ],
)
def test_durations(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "fast", "5 parsecs", "-5s", "5ss", "ms", True, -1])
def test_bad_durations_say_what_is_expected(text: str | int) -> None:
    with pytest.raises(ValueError, match=r"duration|negative"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512MB", 512 * 1024**2),
        ("1GB", 1024**3),
        ("16GB", 16 * 1024**3),
        ("64KB", 64 * 1024),
        ("512KB", 512 * 1024),
        ("1MB", 1024**2),
        ("1MiB", 1024**2),
        ("1.5GB", int(1.5 * 1024**3)),
        ("10mb", 10 * 1024**2),
        ("2 GB", 2 * 1024**3),
        ("1TB", 1024**4),
        ("100B", 100),
        ("100", 100),
        ("0", 0),
        (4096, 4096),
    ],
)
def test_sizes_use_binary_multiples(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "big", "-1MB", "5XB", "MB", True, -3])
def test_bad_sizes_say_what_is_expected(text: str | int) -> None:
    with pytest.raises(ValueError, match=r"size|negative"):
        parse_size(text)


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["ms", "s", "m", "h"]))
def test_any_whole_duration_parses(number: int, unit: str) -> None:
    scale = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]
    assert parse_duration(f"{number}{unit}") == pytest.approx(number * scale)


@given(st.integers(min_value=0, max_value=2**40))
def test_byte_counts_round_trip(n: int) -> None:
    assert parse_size(str(n)) == n


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("0.0.0.0:7946", ("0.0.0.0", 7946)),
        (":9090", ("127.0.0.1", 9090)),
        ("[::1]:7946", ("::1", 7946)),
        ("node-1.example.com:7946", ("node-1.example.com", 7946)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
    ],
)
def test_addresses(text: str, address: tuple[str, int]) -> None:
    assert parse_address(text) == address


@pytest.mark.parametrize("text", ["8080", "host:http", "host:70000", "host:-1"])
def test_bad_addresses(text: str) -> None:
    with pytest.raises(ValueError, match=r"HOST:PORT|port"):
        parse_address(text)


def test_formatting() -> None:
    assert format_address(("127.0.0.1", 8080)) == "127.0.0.1:8080"
    assert format_address(("::1", 7946)) == "[::1]:7946"
    assert format_size(512) == "512B"
    assert format_size(512 * 1024**2) == "512.0MB"
    assert format_size(3 * 1024**4) == "3.0TB"
