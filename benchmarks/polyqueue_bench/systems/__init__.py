"""The systems under test, one module each, by the name the harness and its options use.

Each system imports its client only when opened, so listing them needs none of the peers installed.
"""

from __future__ import annotations

from ..config import Spec
from .base import AsyncSystem, AsyncWorkerSide, System, Unsupported, WorkerSide
from .huey import HueySystem
from .naive import NaiveSystem
from .pgqueuer import PgQueuerSystem
from .polyqueue import PolyqueueSystem
from .procrastinate import ProcrastinateSystem

__all__ = [
    "SYSTEMS",
    "AsyncSystem",
    "AsyncWorkerSide",
    "HueySystem",
    "NaiveSystem",
    "PgQueuerSystem",
    "PolyqueueSystem",
    "ProcrastinateSystem",
    "System",
    "Unsupported",
    "WorkerSide",
    "open_system",
]

#: Name -> system, polyqueue first, then the baselines in the order they are shown.
SYSTEMS: dict[str, type[System]] = {
    "polyqueue": PolyqueueSystem,
    "naive": NaiveSystem,
    "pgqueuer": PgQueuerSystem,
    "procrastinate": ProcrastinateSystem,
    "huey": HueySystem,
}


def open_system(spec: Spec) -> System:
    """Build the system a spec names."""
    return SYSTEMS[spec.system](spec)
