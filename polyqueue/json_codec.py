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
    size = len(text.encode("utf-8"))
    if size > max_bytes:
        raise PayloadTooLarge(f"payload is {size} bytes of JSON, over the limit of {max_bytes} bytes")
    return text


def _check_plain(value: Any, depth: int) -> None:
    # json.dumps would silently turn tuples into lists and int keys into strings,
    # so a payload would not round-trip; reject those instead of changing them.
    if depth > 200:
        raise InvalidPayload("payload nests deeper than 200 levels")
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
