"""Payload and result encoding: strict JSON, never pickle."""

from __future__ import annotations

import json
import math
from typing import Any

from .errors import InvalidPayload, PayloadTooLarge

__all__ = ["dumps", "encode_payload", "loads"]

_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
loads = json.loads


def dumps(value: Any) -> str:
    """Encode ``value`` as compact JSON; raise InvalidPayload if it is not plain JSON data."""
    try:
        return _encoder.encode(value)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidPayload(f"not JSON-serialisable: {exc}") from None


def encode_payload(value: Any, max_bytes: int) -> str:
    """Encode a payload, checking type strictly (dict keys must be strings) and the size limit."""
    _check_plain(value, 0)
    text = dumps(value)
    if text.isascii():  # the common case: one byte per character, nothing to encode
        size = len(text)
    else:
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidPayload("payload holds a string that is not valid Unicode (lone surrogate)") from None
    if size > max_bytes:
        raise PayloadTooLarge(f"payload is {size} bytes of JSON, over the limit of {max_bytes} bytes")
    return text


#: Exact types that need no further look (subclasses take the slower isinstance path).
_PLAIN_SCALARS = frozenset({str, int, bool, type(None)})


def _check_plain(value: Any, depth: int) -> None:
    # json.dumps would silently turn tuples into lists and int keys into strings,
    # so a payload would not round-trip; reject those instead of changing them.
    if depth > 200:
        raise InvalidPayload("payload nests deeper than 200 levels")
    kind = type(value)
    if kind in _PLAIN_SCALARS:
        return
    if kind is dict:  # the usual payload: a flat dict of scalars, checked without a call per value
        for key, item in value.items():
            if type(key) is not str and not isinstance(key, str):
                raise InvalidPayload(f"payload dict key {key!r} is not a string")
            if type(item) not in _PLAIN_SCALARS:
                _check_plain(item, depth + 1)
        return
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidPayload(f"payload holds {value!r}, which JSON cannot represent")
        return
    if isinstance(value, list):
        for item in value:
            _check_plain(item, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidPayload(f"payload dict key {key!r} is not a string")
            _check_plain(item, depth + 1)
        return
    raise InvalidPayload(
        f"payload holds a {type(value).__name__}, which is not JSON (use dict, list, str, int, float, bool, None)"
    )
