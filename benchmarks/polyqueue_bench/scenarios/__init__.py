"""The scenarios, one module each, in the order they run (:data:`polyqueue_bench.config.SCENARIOS`)."""

from __future__ import annotations

from .base import Scenario, Trial
from .drain import Drain, drain_once
from .enqueue import Enqueue
from .history import History
from .idle import Idle
from .latency import Latency
from .memory import Memory
from .select1 import Select1

__all__ = ["SCENARIO_CLASSES", "Scenario", "Trial", "drain_once"]

#: Name -> scenario, in the order they run.
SCENARIO_CLASSES: dict[str, type[Scenario]] = {
    scenario.name: scenario for scenario in (Select1, Enqueue, Drain, Latency, Idle, History, Memory)
}
