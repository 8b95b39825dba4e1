"""The capability guard: the conformance suite's meta-test, enforced on every suite test as it runs.

A suite test that uses an optional feature (a dedupe key, a delay, a
priority, ``connection=``, several processes) without declaring it with
``@requires(...)`` would pass on backends that have the feature and fail
for the wrong reason on those that lack it. The guard fails such a test at
once, naming the missing marker.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pytest

from polyqueue.backends.base import Capability
from polyqueue.queue import Queue

__all__ = ["CapabilityGuardQueue", "UndeclaredCapability"]


class UndeclaredCapability(AssertionError):
    """A suite test used a capability it did not declare."""


class CapabilityGuardQueue(Queue):
    """A Queue that checks each optional feature used against the test's declared capabilities."""

    declared: frozenset[str]

    @classmethod
    def wrap(cls, queue: Queue, declared: Iterable[str]) -> CapabilityGuardQueue:
        """A guarded view of ``queue`` (same backend and plugins)."""
        guarded = cls(queue.backend, queue.plugins, queue.options)
        guarded.declared = frozenset(declared)
        guarded._url = queue.connect_url()
        return guarded

    def uses(self, capability: str) -> None:
        """Fail the running test unless it declared ``capability``."""
        if capability not in self.declared:
            message = f"suite test uses capability {capability!r} without @requires({capability!r})"
            pytest.fail(message, pytrace=False)

    def _new_job(self, spec: Mapping[str, Any]) -> Any:
        job = super()._new_job(spec)  # invalid input raises before any feature is "used"
        if spec.get("dedupe_key") is not None:
            self.uses(Capability.DEDUPE)
        if spec.get("delay") or spec.get("run_at") is not None:
            self.uses(Capability.DELAYED)
        if spec.get("priority"):
            self.uses(Capability.PRIORITIES)
        return job

    def require_capability(self, capability: Capability, what: str) -> None:
        """Every feature the Queue checks a capability for (``dedupe_for``, transfers, ...) counts as used."""
        self.uses(capability)
        super().require_capability(capability, what)

    def _store(self, batch: list[Any], connection: Any) -> list[Any]:
        if connection is not None:
            self.uses(Capability.TRANSACTIONAL_ENQUEUE)
        return super()._store(batch, connection)
