"""What text the node can keep: checks for strings from outside (REST bodies, messages).

SQLite stores text as UTF-8, and a Python string can hold what UTF-8 cannot encode (a
lone surrogate such as ``"\\ud800"``, which JSON's ``\\ud800`` escape produces). Such a
string must be refused where it enters, with a 400, never reach the state store's
write-behind batch where it would fail the commit of its neighbours.
"""

from __future__ import annotations

from typing import Any

__all__ = ["first_unencodable", "text_problem"]


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored as UTF-8 text, or None when it can."""
    if value.isascii():
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (
            f"holds a lone surrogate {value[exc.start]!r} at character {exc.start}, "
            f"which is not Unicode text (UTF-8 cannot encode it)"
        )
    return None


def first_unencodable(value: Any, path: str = "$") -> tuple[str, str] | None:
    """The JSON path and problem of the first string (key or value) in ``value`` that
    cannot be stored as UTF-8, or None. Iterative: any nesting depth is safe."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            problem = text_problem(item)
            if problem is not None:
                return where, problem
        elif isinstance(item, dict):
            for key, child in item.items():
                if isinstance(key, str):
                    problem = text_problem(key)
                    if problem is not None:
                        return f"{where} (a key)", problem
                stack.append((child, f"{where}.{key}"))
        elif isinstance(item, list):
            stack.extend((child, f"{where}[{i}]") for i, child in enumerate(item))
    return None
