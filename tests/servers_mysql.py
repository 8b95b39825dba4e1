"""A private, throwaway MariaDB server for disruptive tests (kills, restarts, outages, server options).

Same surface as the other :class:`servers.PrivateServer` kinds: ``start()``,
``stop(mode)``, ``restart(mode)``, ``close()``, ``url``. The data directory
is made with ``mariadb-install-db`` in a temporary folder; root has an empty
password on 127.0.0.1, and a database ``test`` exists.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from typing import Any

from servers import PrivateServer, ServerUnavailable, wait_for_port

__all__ = ["PrivateMariaDB"]


class PrivateMariaDB(PrivateServer):
    """``mariadbd`` on a free loopback port; ``options`` become ``--key=value`` server flags.

    The redo log is flushed to the OS at each commit but not fsynced
    (``innodb_flush_log_at_trx_commit=2``): a committed job survives a killed
    server process, which is what the tests do, but not a machine crash.
    """

    kind = "mariadb"

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        self.server = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
        self.install = shutil.which("mariadb-install-db") or "/usr/bin/mariadb-install-db"
        if not (os.path.exists(self.server) and os.path.exists(self.install)):
            raise ServerUnavailable("MariaDB server programs (mariadbd, mariadb-install-db) are not installed")
        super().__init__()
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.options = {
            "innodb-buffer-pool-size": "64M",
            "innodb-log-file-size": "32M",
            "innodb-flush-log-at-trx-commit": "2",
            "max-connections": "200",
            **{k.replace("_", "-"): str(v) for k, v in (options or {}).items()},
        }
        self.process: subprocess.Popen[bytes] | None = None
        self._as_root = ["--user=root"] if os.geteuid() == 0 else []
        done = subprocess.run(
            [self.install, "--no-defaults", f"--datadir={self.data}", "--auth-root-authentication-method=normal",
             "--skip-test-db", *self._as_root],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise ServerUnavailable(f"mariadb-install-db failed: {done.stderr.strip()[-500:]}")
        self._created_test_db = False

    @property
    def url(self) -> str:
        """``mysql+pymysql://root@127.0.0.1:PORT/test``."""
        return f"mysql+pymysql://root@127.0.0.1:{self.port}/test"

    def start(self) -> None:
        """Start ``mariadbd`` and wait until it accepts connections (and ``test`` exists)."""
        args = [
            self.server, "--no-defaults", f"--datadir={self.data}", f"--port={self.port}",
            "--bind-address=127.0.0.1", f"--socket={self.root / 'mysqld.sock'}", f"--pid-file={self.root / 'pid'}",
            f"--log-error={self.log}", "--skip-log-bin", "--skip-name-resolve", *self._as_root,
            *(f"--{key}={value}" for key, value in self.options.items()),
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_for_port(self.port, 60.0) or self.process.poll() is not None:
            tail = self.log.read_text(errors="replace")[-1500:] if self.log.exists() else ""
            self.stop("immediate")
            raise ServerUnavailable(f"private MariaDB did not start on port {self.port}: {tail}")
        self.running = True
        if not self._created_test_db:
            self.sql("CREATE DATABASE IF NOT EXISTS test CHARACTER SET utf8mb4")
            self._created_test_db = True

    def stop(self, mode: str = "fast") -> None:
        """``fast``: SIGTERM, a clean shutdown; ``immediate``: SIGKILL, as if the server crashed."""
        if mode not in ("fast", "immediate"):
            raise ValueError(f"unknown stop mode {mode!r}")
        process, self.process = self.process, None
        self.running = False
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM if mode == "fast" else signal.SIGKILL)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def sql(self, statement: str) -> list[tuple[Any, ...]]:
        """Run one statement as root over TCP and return its rows."""
        import pymysql

        deadline = time.monotonic() + 30
        while True:
            try:
                conn = pymysql.connect(host="127.0.0.1", port=self.port, user="root", autocommit=True)
                break
            except pymysql.err.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        try:
            with conn.cursor() as cursor:
                cursor.execute(statement)
                return list(cursor.fetchall())
        finally:
            conn.close()
