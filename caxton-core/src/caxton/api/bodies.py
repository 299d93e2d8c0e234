"""Reading request bodies safely: size, time and nesting are bounded.

``await request.json()`` would read any amount the client sends at any speed and,
in aiohttp 3.14, let a deeply nested document raise ``RecursionError``. :func:`read_json`
checks ``Content-Length`` against ``networking.max_body_size`` before reading, gives the
client ``networking.request_timeout`` to send the body, refuses ``NaN``/``Infinity``
(not JSON) and any document nested deeper than :data:`MAX_DEPTH`.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from caxton.api.keys import SETTINGS
from caxton.errors import ClientTimeout, MalformedJSON, PayloadTooLarge
from caxton.text import first_unencodable

__all__ = ["EMPTY", "MAX_DEPTH", "json_depth", "read_body", "read_json"]

#: Deepest nesting of objects and arrays accepted in a request body.
MAX_DEPTH = 32


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_decode = json.JSONDecoder(parse_constant=_reject_constant).decode


def json_depth(value: Any, limit: int) -> int:
    """Nesting depth of ``value`` (a scalar is 0), counting at most up to ``limit + 1``.

    Iterative, so it cannot overflow the stack whatever the input.
    """
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        depth += 1
        if depth > deepest:
            deepest = depth
            if deepest > limit:
                return deepest
        stack.extend((child, depth) for child in children)
    return deepest


async def read_body(request: web.Request) -> bytes:
    """The raw body, within the size limit and the body read timeout."""
    settings = request.config_dict[SETTINGS]
    length = request.content_length
    if length is not None and length > settings.max_body_size:
        raise PayloadTooLarge(
            f"request body of {length} bytes exceeds the limit of {settings.max_body_size} "
            f"bytes (networking.max_body_size)"
        )
    try:
        return await asyncio.wait_for(request.read(), settings.body_timeout)
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(
            f"request body exceeds the limit of {settings.max_body_size} bytes "
            f"(networking.max_body_size)"
        ) from None
    except asyncio.TimeoutError:
        raise ClientTimeout(
            f"the request body did not arrive within {settings.body_timeout:g}s "
            f"(networking.request_timeout)"
        ) from None


#: What :func:`read_json` returns for an empty body when the body is optional.
EMPTY: Any = object()


async def read_json(request: web.Request, *, optional: bool = False) -> Any:
    """The body parsed as JSON; :data:`EMPTY` for no body when ``optional``."""
    body = await read_body(request)
    if not body.strip():
        if optional and not body:
            return EMPTY
        if optional:  # an optional body is absent, or JSON: blanks are neither
            raise MalformedJSON("the request body is only blanks: send a JSON object or nothing")
        raise MalformedJSON("the request body is empty: send a JSON object")
    try:
        text = body.decode("utf-8")
        value = _decode(text)
    except UnicodeDecodeError:
        raise MalformedJSON("the request body is not UTF-8 text") from None
    except RecursionError:
        raise MalformedJSON(
            f"the request body is nested too deeply; the limit is {MAX_DEPTH} levels"
        ) from None
    except ValueError as exc:
        raise MalformedJSON(f"the request body is not valid JSON: {exc}") from None
    if json_depth(value, MAX_DEPTH) > MAX_DEPTH:
        raise MalformedJSON(
            f"the request body is nested too deeply; the limit is {MAX_DEPTH} levels"
        )
    unencodable = first_unencodable(value)
    if unencodable is not None:
        where, problem = unencodable
        raise MalformedJSON(f"the request body's string at {where} {problem}")
    return value
