"""Input checks shared by every public entry point: names, integers, durations, queue and type lists.

Each check returns the value it accepted (normalised) or raises
:class:`~polyqueue.errors.InvalidArgument` with a message naming what was wrong.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

from .errors import InvalidArgument

__all__ = [
    "MAX_DURATION_SECONDS",
    "MAX_HEADERS",
    "MAX_HEADERS_BYTES",
    "MAX_NAME_LENGTH",
    "check_headers",
    "check_int",
    "check_job_types",
    "check_name",
    "check_queue_name",
    "check_seconds",
    "parse_duration",
    "parse_rate",
    "queue_list",
    "split_names",
]

MAX_NAME_LENGTH = 255
#: Durations beyond this (100 years) overflow some databases' date types.
MAX_DURATION_SECONDS = 100 * 365 * 86400
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)?\s*$", re.IGNORECASE)
_DURATION_UNITS = {None: 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}
_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*(s|sec|second|m|min|minute|h|hour))?\s*$", re.IGNORECASE)
_RATE_UNITS = {None: 1, "s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}
#: The fastest pace a rate may ask for (jobs per second).
MAX_RATE = 1_000_000.0
#: Most entries a job's headers may hold.
MAX_HEADERS = 64
#: Largest a job's headers may be, as the UTF-8 of their JSON (they travel with every claim).
MAX_HEADERS_BYTES = 8192


def parse_duration(value: float | int | timedelta | str, what: str = "duration") -> float:
    """Seconds from a number, a timedelta or text such as ``"90"``, ``"30m"``, ``"7d"``."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool):
        raise InvalidArgument(f"{what} must be a number of seconds, a timedelta or text like '7d'")
    elif isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION_RE.match(value)
        if not match:
            raise InvalidArgument(f"{what} {value!r} is not a duration like '45s', '30m', '12h' or '7d'")
        unit = match.group(2)
        seconds = float(match.group(1)) * _DURATION_UNITS[unit.lower() if unit else None]
    else:
        raise InvalidArgument(f"{what} must be a number of seconds, a timedelta or text like '7d'")
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidArgument(f"{what} must be a finite number of seconds >= 0")
    if seconds > MAX_DURATION_SECONDS:
        raise InvalidArgument(f"{what} of {seconds:g}s is beyond the 100-year limit")
    return seconds


def parse_rate(value: float | int | str, what: str = "rate") -> float:
    """Jobs per second from a number or text such as ``"50/s"``, ``"300/m"``, ``"1000/h"`` (bare: per second)."""
    if isinstance(value, bool):
        raise InvalidArgument(f"{what} must be a number of jobs per second or text like '50/s'")
    if isinstance(value, (int, float)):
        rate = float(value)
    elif isinstance(value, str):
        match = _RATE_RE.match(value)
        if not match:
            raise InvalidArgument(f"{what} {value!r} is not a rate like '50/s', '300/m' or '1000/h'")
        unit = match.group(2)
        rate = float(match.group(1)) / _RATE_UNITS[unit.lower() if unit else None]
    else:
        raise InvalidArgument(f"{what} must be a number of jobs per second or text like '50/s'")
    if not math.isfinite(rate) or rate <= 0:
        raise InvalidArgument(f"{what} must be more than zero jobs per second")
    if rate > MAX_RATE:
        raise InvalidArgument(f"{what} of {rate:g}/s is beyond the {MAX_RATE:g}/s limit")
    return rate


#: Names already found valid (queue names and job types repeat in every batch); bounded.
_VALID_NAMES: set[str] = set()


def check_name(value: Any, what: str) -> str:
    """A queue name, job type, dedupe key or worker id: non-empty text of at most 255 characters, no NUL."""
    if type(value) is str and value in _VALID_NAMES:
        return value
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"{what} must be a non-empty string")
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidArgument(f"{what} is {len(value)} characters; the limit is {MAX_NAME_LENGTH}")
    if "\x00" in value:
        raise InvalidArgument(f"{what} must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument(f"{what} is not valid Unicode text (lone surrogate)") from None
    if type(value) is str and len(_VALID_NAMES) < 4096:
        _VALID_NAMES.add(value)
    return value


def check_queue_name(value: Any, what: str = "queue name") -> str:
    """A queue name: :func:`check_name`, and no leading or trailing whitespace.

    ``"emails "`` would otherwise be a second queue, printed just like
    ``"emails"``, that no worker of ``"emails"`` ever drains.
    """
    name = check_name(value, what)
    if name != name.strip():
        raise InvalidArgument(f"{what} {name!r} has leading or trailing whitespace")
    return name


def split_names(text: str, what: str = "queue name") -> list[str]:
    """Names from comma-separated text (a command-line list): blanks around commas dropped, each checked.

    ``"emails, payments"`` is ``["emails", "payments"]``; an empty item
    (``"a,,b"``, a trailing comma) is refused rather than silently skipped.
    """
    parts = [part.strip() for part in text.split(",")]
    if any(not part for part in parts):
        raise InvalidArgument(f"{text!r} is not a comma-separated list of {what}s (an item is empty)")
    return [check_queue_name(part, what) for part in dict.fromkeys(parts)]


def check_int(value: Any, what: str, low: int, high: int) -> int:
    """An integer (not a bool) between ``low`` and ``high`` inclusive."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{what} must be an integer")
    if not low <= value <= high:
        raise InvalidArgument(f"{what} must be between {low} and {high}")
    return value


def check_seconds(value: Any, what: str, *, positive: bool = False) -> float:
    """A duration in seconds (see :func:`parse_duration`); ``positive`` refuses zero."""
    seconds = parse_duration(value, what)
    if positive and seconds <= 0:
        raise InvalidArgument(f"{what} must be greater than zero")
    return seconds


def queue_list(queues: str | Iterable[str]) -> list[str]:
    """One queue name or several, checked, duplicates dropped, order kept."""
    names = [queues] if isinstance(queues, str) else list(queues)
    if not names:
        raise InvalidArgument("queues must name at least one queue")
    return [check_queue_name(q) for q in dict.fromkeys(names)]


def check_job_types(job_types: Iterable[str] | None) -> frozenset[str] | None:
    """None (every type) or a non-empty set of checked job types."""
    if job_types is None:
        return None
    if isinstance(job_types, str):
        job_types = [job_types]
    types = frozenset(check_name(t, "job_type") for t in job_types)
    if not types:
        raise InvalidArgument("job_types must name at least one job type (or be None for all)")
    return types


def check_headers(value: Any) -> str | None:
    """A job's headers (a dict of str -> str, small) as the JSON text to store; None for none or empty.

    At most :data:`MAX_HEADERS` entries and :data:`MAX_HEADERS_BYTES` bytes of
    JSON; keys are non-empty names up to 255 characters; values are text
    (no NUL), possibly empty.
    """
    import json

    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidArgument(f"headers must be a dict of str to str, not {type(value).__name__}")
    value = dict(value)
    if len(value) > MAX_HEADERS:
        raise InvalidArgument(f"headers hold at most {MAX_HEADERS} entries, got {len(value)}")
    for key, item in value.items():
        check_name(key, "header name")
        if not isinstance(item, str):
            raise InvalidArgument(f"header {key!r} must be a str, not {type(item).__name__}")
        if "\x00" in item:
            raise InvalidArgument(f"header {key!r} contains a NUL character")
        try:
            item.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgument(f"header {key!r} is not valid Unicode text (lone surrogate)") from None
    if not value:
        return None
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    size = len(text.encode("utf-8"))
    if size > MAX_HEADERS_BYTES:
        raise InvalidArgument(f"headers are {size} bytes of JSON, over the limit of {MAX_HEADERS_BYTES}")
    return text
