"""The exceptions polyqueue raises; every one derives from PolyqueueError."""

from __future__ import annotations

__all__ = [
    "BackendUnavailable",
    "ConfigurationError",
    "InvalidArgument",
    "InvalidPayload",
    "JobCancelled",
    "JobNotFound",
    "JobTimeout",
    "LeaseLost",
    "PayloadTooLarge",
    "PolyqueueError",
    "SchemaMismatch",
    "SchemaMissing",
]


class PolyqueueError(Exception):
    """Base class of every error polyqueue raises."""


class ConfigurationError(PolyqueueError):
    """A URL, option or plugin is wrong; nothing was done."""


class InvalidArgument(PolyqueueError, ValueError):
    """An argument to a public call is out of range or of the wrong type."""


class BackendUnavailable(PolyqueueError):
    """The database (or its driver) cannot be reached; the call did not take effect."""


class SchemaMissing(PolyqueueError):
    """The queue tables do not exist yet: run ``polyqueue migrate`` (or ``Queue.migrate()``)."""


class SchemaMismatch(ConfigurationError):
    """The queue tables are not the schema this polyqueue uses, and nothing was done.

    Older: run ``polyqueue migrate``. Newer: upgrade polyqueue. Not
    polyqueue's at all (another application's table with the same name):
    choose another ``table_prefix``. The message says which.
    """


class InvalidPayload(PolyqueueError, ValueError):
    """The payload cannot be stored as JSON."""


class PayloadTooLarge(InvalidPayload):
    """The payload's JSON is larger than the queue's ``max_payload_bytes``."""


class LeaseLost(PolyqueueError):
    """This claim no longer holds the job (its lease expired or another worker took it)."""


class JobNotFound(PolyqueueError, LookupError):
    """No job has the given id."""


class JobCancelled(PolyqueueError):
    """Raised by :meth:`Job.check` in a handler whose job was cancelled while running; the job ends ``cancelled``."""


class JobTimeout(PolyqueueError, TimeoutError):
    """An attempt ran longer than its timeout (raised by :meth:`Job.check`, recorded as the attempt's error)."""
