"""Private, throwaway database servers for disruptive tests (restarts, crashes, outages).

The standard servers on 127.0.0.1 are shared by every test running in
parallel, so a test that stops, kills or restarts a server starts its own
instance here instead: a fresh data directory in a temporary folder, a free
loopback port, and nothing left behind after ``close()``.

Each kind is a :class:`PrivateServer` subclass with the same small surface:
``start()``, ``stop(mode)``, ``restart(mode)``, ``close()``, ``url`` and use
as a context manager. PostgreSQL is here; MariaDB (``mariadb-install-db`` then
``mariadbd --datadir --port --socket --user=root``) and Redis
(``redis-server --port N``) follow the same shape as ``PrivateMariaDB`` and
``PrivateRedis``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["PrivatePostgreSQL", "PrivateRedis", "PrivateServer", "ServerUnavailable", "free_port"]


class ServerUnavailable(RuntimeError):
    """The server's programs are not installed or the server would not start (tests skip on it)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port`` within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


class PrivateServer:
    """A server process of our own on a free loopback port, with its data in a temporary folder."""

    kind = "abstract"

    def __init__(self) -> None:
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix=f"polyqueue-{self.kind}-"))
        self.running = False

    @property
    def url(self) -> str:
        """The SQLAlchemy / redis URL of this server."""
        raise NotImplementedError

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        raise NotImplementedError

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` (clean) or ``immediate`` (as if it crashed)."""
        raise NotImplementedError

    def restart(self, mode: str = "fast", down_for: float = 0.0) -> None:
        """Stop the server, stay down ``down_for`` seconds, start it again."""
        self.stop(mode)
        time.sleep(down_for)
        self.start()

    def close(self) -> None:
        """Stop the server if it runs and delete its data."""
        try:
            if self.running:
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PrivateServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} 127.0.0.1:{self.port} {'running' if self.running else 'stopped'}>"


class PrivatePostgreSQL(PrivateServer):
    """A throwaway PostgreSQL cluster (``initdb`` + ``pg_ctl``), trust auth, superuser ``postgres``.

    Run as root, the server programs run as the ``postgres`` user. ``fsync``
    is off (nothing here must survive the machine crashing, only the server
    process), but ``synchronous_commit`` stays on: a committed job must survive
    ``stop("immediate")``. ``pg_stat_statements`` is preloaded so tests can
    count the statements a client sends.
    """

    kind = "postgresql"
    BIN_DIRS = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/17/bin")

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        self.bin = self._find_bin()
        super().__init__()
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.root}'",
            "fsync": "off",
            "full_page_writes": "off",
            "shared_buffers": "'32MB'",
            "max_connections": "100",
            "shared_preload_libraries": "'pg_stat_statements'",
            "pg_stat_statements.track_utility": "on",
            **(settings or {}),
        }
        as_postgres = os.geteuid() == 0
        self._runas = ["runuser", "-u", "postgres", "--"] if as_postgres else []
        if as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self._initdb()

    @classmethod
    def _find_bin(cls) -> Path:
        for candidate in cls.BIN_DIRS:
            if (Path(candidate) / "initdb").exists():
                return Path(candidate)
        found = shutil.which("initdb")
        if found:
            return Path(found).parent
        raise ServerUnavailable("PostgreSQL server programs (initdb, pg_ctl) are not installed")

    def _cmd(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self._runas, *args], capture_output=True, text=True, timeout=timeout, check=False, cwd=self.root
        )

    def _initdb(self) -> None:
        done = self._cmd(
            str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
            "-E", "UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        if done.returncode != 0:
            raise ServerUnavailable(f"initdb failed: {done.stderr.strip()[-500:]}")
        with open(self.data / "postgresql.conf", "a", encoding="utf-8") as conf:
            for key, value in self.settings.items():
                conf.write(f"{key} = {value}\n")

    @property
    def url(self) -> str:
        """``postgresql+psycopg://postgres@127.0.0.1:PORT/postgres``."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def dsn(self) -> str:
        """A libpq connection string for psycopg."""
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    def start(self) -> None:
        """``pg_ctl start -w``; raises :class:`ServerUnavailable` with the log's tail if it will not come up."""
        done = self._cmd(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")
        if done.returncode != 0 or not wait_for_port(self.port, 30.0):
            tail = self.log.read_text(errors="replace")[-1500:] if self.log.exists() else done.stderr
            raise ServerUnavailable(f"private PostgreSQL did not start on port {self.port}: {tail}")
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m fast|immediate``: fast ends sessions cleanly, immediate is a crash."""
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(f"unknown stop mode {mode!r}")
        done = self._cmd(str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60", "-m", mode, "stop")
        if done.returncode != 0 and "is the server running" not in done.stderr:
            raise RuntimeError(f"pg_ctl stop failed: {done.stderr.strip()}")
        self.running = False

    def psql(self, sql: str) -> str:
        """Run ``sql`` with psql as the superuser; returns the unaligned, tuples-only output."""
        done = subprocess.run(
            [str(self.bin / "psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", self.dsn, "-c", sql],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr.strip()}")
        return done.stdout.strip()


class PrivateRedis(PrivateServer):
    """A throwaway ``redis-server``: loopback only, no persistence, so a restart comes back empty."""

    kind = "redis"

    def __init__(self) -> None:
        found = shutil.which("redis-server")
        if found is None:
            raise ServerUnavailable("redis-server is not installed")
        self.bin = found
        super().__init__()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start ``redis-server`` on this instance's port and wait until it accepts connections."""
        self.process = subprocess.Popen(
            [self.bin, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.root), "--logfile", str(self.root / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        if not wait_for_port(self.port, 10.0):
            self.process.kill()
            self.process.wait(10)
            raise ServerUnavailable(f"private Redis did not start on port {self.port}")
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """``fast``: SIGTERM and wait; ``immediate``: SIGKILL, as if it crashed."""
        if self.process is not None:
            if mode == "immediate":
                self.process.kill()
            else:
                self.process.terminate()
            self.process.wait(10)
            self.process = None
        self.running = False
