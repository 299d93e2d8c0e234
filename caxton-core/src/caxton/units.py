"""Parsing of the human units config and flags use: durations, sizes, addresses."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|µs|ms|s|m|h|d)?\s*$")
_DURATION_SCALE = {
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_SCALE = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_duration(value: str | int | float) -> float:
    """``"200ms"`` -> 0.2, ``"5s"`` -> 5.0, ``"1h"`` -> 3600.0; a bare number is seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like '200ms' or '5s', got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"a duration cannot be negative: {value!r}")
        return float(value)
    match = _DURATION.match(value)
    if not match:
        raise ValueError(f"expected a duration like '200ms', '5s' or '1h', got {value!r}")
    number, unit = match.groups()
    return float(number) * _DURATION_SCALE[unit or "s"]


def parse_size(value: str | int) -> int:
    """``"512MB"`` -> 536870912 (binary multiples: KB = KiB); a bare number is bytes."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size like '512MB', got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size cannot be negative: {value!r}")
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"expected a size like '64KB', '512MB' or '2GB', got {value!r}")
    number, unit = match.groups()
    scale = _SIZE_SCALE[(unit or "").lower()[:1] if unit and unit.lower() != "b" else ""]
    return int(float(number) * scale)


def parse_address(value: str, *, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``"127.0.0.1:8080"``, ``"[::1]:7946"``, ``":8080"`` or ``"host:0"`` -> (host, port)."""
    text = value.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    host = host.strip("[]") or default_host
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"expected HOST:PORT with a numeric port, got {value!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range in {value!r}")
    return host, port


def format_address(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def format_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.1f}{unit}" if unit != "B" else f"{n}B"
        n = n / 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")
