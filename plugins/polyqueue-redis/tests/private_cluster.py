"""Throwaway Redis servers for disruptive tests and benchmarks: a private cluster, or one private node.

The shared cluster on 127.0.0.1:7000-7005 serves every test running in
parallel, so a test that kills a master (or a benchmark that wants one or
three masters) starts its own here: fresh data directories in a temporary
folder, free loopback ports, nothing left behind after ``close()``. Same
shape as the PrivateServer classes of polyqueue's own tests/servers.py.

The cluster is built with CLUSTER commands, not ``redis-cli --cluster
create``, so that one master works too (redis-cli insists on three).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["PrivateCluster", "PrivateRedis", "ServerUnavailable", "free_port"]

_SLOTS = 16384


class ServerUnavailable(RuntimeError):
    """redis-server is not installed or would not start (tests skip on it)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago (and whose cluster bus port +10000 is free)."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port + 10000 < 65536:
            try:
                with socket.socket() as bus:
                    bus.bind(("127.0.0.1", port + 10000))
                return port
            except OSError:
                continue
    raise ServerUnavailable("no free port pair for a cluster node")


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise ServerUnavailable(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


class _Node:
    """One redis-server process of our own."""

    def __init__(
        self, root: Path, *, cluster: bool, node_timeout_ms: int, appendfsync: str, extra: tuple[str, ...] = ()
    ) -> None:
        self.extra = extra
        self.port = free_port()
        self.dir = root / str(self.port)
        self.dir.mkdir(parents=True)
        self.cluster = cluster
        self.node_timeout_ms = node_timeout_ms
        self.appendfsync = appendfsync
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServerUnavailable("redis-server is not installed")
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", "",
                "--appendonly", "yes", "--appendfsync", self.appendfsync,
                "--logfile", str(self.dir / "redis.log")]  # fmt: skip
        args += list(self.extra)
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                     "--cluster-node-timeout", str(self.node_timeout_ms)]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for(self.answers, 20.0, f"redis-server on port {self.port}")

    def answers(self) -> bool:
        try:
            return self.cli("PING") == "PONG"
        except (OSError, RuntimeError):
            return False

    def cli(self, *args: str) -> str:
        """Run one command with redis-cli; returns its raw output (stripped)."""
        auth = []
        if "--requirepass" in self.extra:
            auth = ["--no-auth-warning", "-a", self.extra[self.extra.index("--requirepass") + 1]]
        done = subprocess.run(
            ["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), *auth, *args],
            capture_output=True, text=True, timeout=20, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout.strip()

    def info(self, section: str) -> dict[str, str]:
        pairs = (line.split(":", 1) for line in self.cli("INFO", section).splitlines() if ":" in line)
        return {key: value.strip() for key, value in pairs}

    def cluster_info(self) -> dict[str, str]:
        pairs = (line.split(":", 1) for line in self.cli("CLUSTER", "INFO").splitlines() if ":" in line)
        return {key: value.strip() for key, value in pairs}

    def kill(self) -> None:
        """SIGKILL: a crash, no chance to write anything more."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
            self.process = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class PrivateCluster:
    """``masters`` masters with ``replicas_per_master`` replicas each, on free loopback ports.

    ``url`` is a ``redis+cluster://`` URL naming every node. ``kill_master_of(key)``
    crashes the master serving a key's slot; ``wait_for_failover()`` waits until
    every slot is served again and the cluster says ok.
    """

    def __init__(
        self,
        masters: int = 3,
        replicas_per_master: int = 1,
        *,
        node_timeout_ms: int = 1000,
        appendfsync: str = "everysec",
    ) -> None:
        if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
            raise ServerUnavailable("redis-server and redis-cli are needed for a private cluster")
        self.root = Path(tempfile.mkdtemp(prefix="polyqueue-redis-cluster-"))
        kw = {"cluster": True, "node_timeout_ms": node_timeout_ms, "appendfsync": appendfsync}
        self.masters = [_Node(self.root, **kw) for _ in range(masters)]  # type: ignore[arg-type]
        self.replicas = [[_Node(self.root, **kw) for _ in range(replicas_per_master)] for _ in range(masters)]  # type: ignore[arg-type]
        self.nodes = [*self.masters, *(r for group in self.replicas for r in group)]

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:P1,127.0.0.1:P2,.../`` (every node, so any one may be down)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes) + "/"

    def start(self) -> PrivateCluster:
        """Start the nodes, give the masters equal slot ranges, join everyone, attach the replicas."""
        for node in self.nodes:
            node.start()
        ids = {node.port: node.cli("CLUSTER", "MYID") for node in self.nodes}
        for epoch, node in enumerate(self.nodes, start=1):
            node.cli("CLUSTER", "SET-CONFIG-EPOCH", str(epoch))
        share = _SLOTS // len(self.masters)
        for index, master in enumerate(self.masters):
            first = index * share
            last = _SLOTS - 1 if index == len(self.masters) - 1 else first + share - 1
            master.cli("CLUSTER", "ADDSLOTSRANGE", str(first), str(last))
        for node in self.nodes[1:]:
            node.cli("CLUSTER", "MEET", "127.0.0.1", str(self.nodes[0].port))
        _wait_for(lambda: all(self._knows_everyone(node) for node in self.nodes), 30, "the nodes to meet")
        for master, group in zip(self.masters, self.replicas, strict=True):
            for replica in group:
                replica.cli("CLUSTER", "REPLICATE", ids[master.port])
        self.wait_until_ok()
        return self

    def _knows_everyone(self, node: _Node) -> bool:
        return len([line for line in node.cli("CLUSTER", "NODES").splitlines() if line.strip()]) == len(self.nodes)

    def wait_until_ok(self, timeout: float = 60.0) -> None:
        """Until every running node says ``cluster_state:ok`` and every master has its replicas in sync."""

        def ok() -> bool:
            running = [node for node in self.nodes if node.running]
            if not all(node.cluster_info().get("cluster_state") == "ok" for node in running):
                return False
            for node in running:
                info = node.info("replication")
                if info.get("role") == "slave" and info.get("master_link_status") != "up":
                    return False
            return True

        _wait_for(ok, timeout, "the cluster to be ok with its replicas in sync")

    def master_of(self, key: str) -> _Node:
        """The running master serving ``key``'s slot now."""
        slot = int(self.nodes[0].cli("CLUSTER", "KEYSLOT", key)) if self.nodes[0].running else None
        for node in self.nodes:
            if not node.running:
                continue
            if slot is None:
                slot = int(node.cli("CLUSTER", "KEYSLOT", key))
            for line in node.cli("CLUSTER", "NODES").splitlines():
                fields = line.split()
                if "master" not in fields[2] or "fail" in fields[2]:
                    continue
                for part in fields[8:]:
                    low, _, high = part.partition("-")
                    if low.isdigit() and int(low) <= slot <= int(high or low):
                        port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
                        return next(n for n in self.nodes if n.port == port)
            break
        raise RuntimeError(f"no master serves the slot of {key!r}")

    def kill_master_of(self, key: str) -> _Node:
        """SIGKILL the master serving ``key``'s slot; returns it (its replica takes over after the node timeout)."""
        master = self.master_of(key)
        master.kill()
        return master

    def wait_for_failover(self, timeout: float = 60.0) -> None:
        """Until a replica has taken over every slot of a killed master and the cluster is ok again."""
        self.wait_until_ok(timeout)

    def close(self) -> None:
        """Stop every node and delete the data."""
        try:
            for node in self.nodes:
                node.kill()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PrivateCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class PrivateRedis:
    """One throwaway redis-server (no cluster): for tests that count the commands a script runs."""

    def __init__(self, password: str | None = None) -> None:
        if shutil.which("redis-server") is None:
            raise ServerUnavailable("redis-server is not installed")
        self.root = Path(tempfile.mkdtemp(prefix="polyqueue-redis-"))
        extra = ("--requirepass", password) if password else ()
        self.node = _Node(self.root, cluster=False, node_timeout_ms=0, appendfsync="no", extra=extra)

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.node.port}/0"

    def __enter__(self) -> PrivateRedis:
        self.node.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self.node.kill()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

