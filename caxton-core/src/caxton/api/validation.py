"""Checking request data against the schemas of the OpenAPI document.

The API validates every body and parameter with the very schemas it publishes at
``/api/v1/openapi.json`` (:mod:`caxton.api.openapi`), so the document and the server
cannot disagree about what is valid. :func:`check` implements the part of JSON Schema
those schemas use (``type``, ``nullable``, ``enum``, ``properties``, ``required``,
``additionalProperties``, ``minProperties``, string lengths, ``pattern``, the ``byte``
and ``uuid`` formats, number bounds, array bounds, ``anyOf`` and local ``$ref``) and
raises :class:`~caxton.errors.ValidationError` naming the offending field.
"""

from __future__ import annotations

import base64
import binascii
import functools
import math
import re
from collections.abc import Mapping
from typing import Any

from caxton.errors import ValidationError

__all__ = ["check", "decode_base64"]

_REF_PREFIX = "#/components/schemas/"


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


_TYPE_CHECKS = {
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: (
        not isinstance(v, bool)
        and (isinstance(v, int) or (isinstance(v, float) and math.isfinite(v) and v.is_integer()))
    ),
    "number": lambda v: not isinstance(v, bool) and isinstance(v, int | float),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
}
_TYPE_WORDS = {
    "string": "a string",
    "boolean": "true or false",
    "integer": "an integer",
    "number": "a number",
    "object": "an object",
    "array": "an array",
}


@functools.lru_cache(maxsize=256)
def _pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def decode_base64(value: str, where: str) -> bytes:
    """Strict standard base64 (the ``byte`` format), or a ValidationError."""
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ValidationError(
            f"{where} is not valid base64: send the module's bytes base64-encoded "
            f"(for example `base64 -w0 agent.wasm`)"
        ) from None


def _where(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def check(
    value: Any,
    schema: Mapping[str, Any],
    components: Mapping[str, Mapping[str, Any]],
    where: str = "body",
) -> None:
    """Raise ValidationError unless ``value`` satisfies ``schema``.

    ``where`` names the value in the message (``"body"``, ``"resource_limits.max_fuel"``,
    ``"query parameter timeout_ms"``).
    """
    ref = schema.get("$ref")
    if ref is not None:
        schema = components[ref.removeprefix(_REF_PREFIX)]
    if value is None:
        if schema.get("nullable"):
            return
        if "type" in schema or "anyOf" in schema:
            raise ValidationError(f"{where} must not be null")
    if "anyOf" in schema:
        errors = []
        for option in schema["anyOf"]:
            try:
                check(value, option, components, where)
                break
            except ValidationError as exc:
                errors.append(str(exc))
        else:
            raise ValidationError(" or ".join(errors))
    expected = schema.get("type")
    if expected is not None and not _TYPE_CHECKS[expected](value):
        raise ValidationError(f"{where} must be {_TYPE_WORDS[expected]}, not {_type_name(value)}")
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(str(v) for v in schema["enum"])
        raise ValidationError(f"{where} must be one of {allowed}; got {value!r}")
    if isinstance(value, str):
        _check_string(value, schema, where)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        _check_number(value, schema, where)
    elif isinstance(value, list):
        _check_array(value, schema, components, where)
    elif isinstance(value, dict):
        _check_object(value, schema, components, where)


def _check_string(value: str, schema: Mapping[str, Any], where: str) -> None:
    if "minLength" in schema and len(value) < schema["minLength"]:
        if schema["minLength"] == 1:
            raise ValidationError(f"{where} must not be empty")
        raise ValidationError(f"{where} must be at least {schema['minLength']} characters long")
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        raise ValidationError(
            f"{where} is {len(value)} characters long; the limit is {schema['maxLength']}"
        )
    if "pattern" in schema and not _pattern(schema["pattern"]).search(value):
        raise ValidationError(
            schema.get("x-pattern-message", "{where} has an invalid format").format(where=where)
        )
    fmt = schema.get("format")
    if fmt == "byte":
        decode_base64(value, where)


def _check_number(value: float, schema: Mapping[str, Any], where: str) -> None:
    if "minimum" in schema and value < schema["minimum"]:
        if schema["minimum"] == 1 and schema.get("type") == "integer":
            raise ValidationError(f"{where} must be greater than 0, got {value}")
        raise ValidationError(f"{where} must be at least {schema['minimum']}, got {value}")
    if "maximum" in schema and value > schema["maximum"]:
        raise ValidationError(
            f"{where}={value} exceeds the maximum of {schema['maximum']}"
            + (f"; {schema['x-maximum-hint']}" if "x-maximum-hint" in schema else "")
        )


def _check_array(
    value: list[Any],
    schema: Mapping[str, Any],
    components: Mapping[str, Mapping[str, Any]],
    where: str,
) -> None:
    if "minItems" in schema and len(value) < schema["minItems"]:
        raise ValidationError(f"{where} must hold at least {schema['minItems']} item(s)")
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        raise ValidationError(
            f"{where} holds {len(value)} items; the limit is {schema['maxItems']}"
        )
    items = schema.get("items")
    if items is not None:
        for index, item in enumerate(value):
            check(item, items, components, _where(where, index))
    if schema.get("uniqueItems"):
        seen: list[Any] = []
        for item in value:
            if item in seen:
                raise ValidationError(f"{where} lists {item!r} twice")
            seen.append(item)


def _check_object(
    value: dict[str, Any],
    schema: Mapping[str, Any],
    components: Mapping[str, Mapping[str, Any]],
    where: str,
) -> None:
    prefix = "" if where == "body" else where
    properties: Mapping[str, Any] = schema.get("properties", {})
    for name in schema.get("required", ()):
        if name not in value:
            raise ValidationError(f"missing field {_where(prefix, name)!r}")
    if "minProperties" in schema and len(value) < schema["minProperties"]:
        raise ValidationError(
            f"{where} must set at least one of: {', '.join(properties) or 'any field'}"
        )
    extra = schema.get("additionalProperties", True)
    for name, item in value.items():
        sub = properties.get(name)
        if sub is not None:
            check(item, sub, components, _where(prefix, name))
        elif extra is False:
            known = ", ".join(properties)
            raise ValidationError(f"unknown field {_where(prefix, name)!r}; known fields: {known}")
        elif isinstance(extra, Mapping):
            check(item, extra, components, _where(prefix, name))
