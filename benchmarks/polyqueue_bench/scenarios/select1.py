"""``SELECT 1`` round trips per second on one autocommit connection through the plain driver: the floor."""

from __future__ import annotations

import time

from ..connections import dbapi_connect
from .base import Scenario, Trial


def round_trips_per_second(url: str, seconds: float) -> float:
    """``SELECT 1`` round trips per second for ``seconds`` on one autocommit driver connection."""
    conn = dbapi_connect(url, autocommit=True)
    try:
        cur = conn.cursor()
        count, deadline = 0, time.perf_counter() + seconds
        started = time.perf_counter()
        while time.perf_counter() < deadline:
            for _ in range(100):
                cur.execute("SELECT 1")
                cur.fetchone()
            count += 100
        return count / (time.perf_counter() - started)
    finally:
        conn.close()


class Select1(Scenario):
    """The floor every backend's figures are read against."""

    name = "select1"

    def trials(self, backend: str) -> list[Trial]:
        url, seconds = self.bench.urls[backend], self.config.select1_seconds

        def run() -> dict[str, float]:
            return {"round trips": round_trips_per_second(url, seconds)}

        metrics = {"round trips": ("round trips/s", True)}
        return [self.trial(backend, "SELECT 1", run, metrics, "one connection, autocommit, plain driver")]
