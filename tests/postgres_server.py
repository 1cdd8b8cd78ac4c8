"""A throwaway PostgreSQL cluster for tests: ``initdb`` into a temp dir, listen on 127.0.0.1 only.

Usage (the ``postgres_url`` fixture in ``conftest.py`` does this once per test session)::

    server = PostgresServer(find_postgres_bindir())
    url = server.start()   # postgresql+psycopg://postgres@127.0.0.1:PORT/lepton_test
    ...
    server.stop()          # pg_ctl stop -m fast on this cluster only, then the dir is removed

PostgreSQL refuses to run as root; when the tests run as root (CI, containers) every server
command runs as the ``postgres`` OS user (``runuser -u postgres --``), which owns the temp dir.
Authentication is ``trust``: the cluster is reachable only from this machine (127.0.0.1 and a
Unix socket in its private temp dir) and lives only as long as the test session.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Final

import psycopg

INSTALL_HINT: Final = (
    "install PostgreSQL's server binaries (Debian/Ubuntu: `apt-get install -y "
    "--no-install-recommends postgresql`; `make test` does this when run as root)"
)
_SERVER_USER: Final = "postgres"
_REQUIRED: Final = ("initdb", "pg_ctl", "postgres")
_DEBIAN_BINDIRS: Final = "/usr/lib/postgresql/*/bin"
_DATABASE_RE: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_START_TIMEOUT_S: Final = 60
_LOG_TAIL_CHARS: Final = 2000


class PostgresServerError(RuntimeError):
    """The throwaway PostgreSQL could not be found, started or stopped.

    ``code``: ``postgres-missing``, ``postgres-user-missing``, ``postgres-invalid-name``,
    ``postgres-command-failed``, ``postgres-start-failed``.
    """

    def __init__(self, code: str, message: str) -> None:
        """Create an error with a machine-readable ``code`` and a human ``message``."""
        super().__init__(message)
        self.code = code
        self.message = message


def _has_binaries(directory: Path) -> bool:
    """Whether ``directory`` holds every server binary we need."""
    return all(os.access(directory / name, os.X_OK) for name in _REQUIRED)


def _version_key(directory: Path) -> tuple[int, ...]:
    """Sort key for ``/usr/lib/postgresql/<version>/bin``: the numeric version."""
    return tuple(int(part) for part in re.findall(r"\d+", directory.parent.name))


def find_postgres_bindir() -> Path | None:
    """Return the directory of ``initdb``/``pg_ctl``/``postgres``, or None if not installed.

    Looks at ``pg_config --bindir``, then Debian's ``/usr/lib/postgresql/*/bin`` (newest
    first), then the directory of a ``pg_ctl`` on PATH.
    """
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            result = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            candidates.append(Path(result.stdout.strip()))
    candidates += sorted(Path("/").glob(_DEBIAN_BINDIRS.lstrip("/")), key=_version_key)[::-1]
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl is not None:
        candidates.append(Path(pg_ctl).resolve().parent)
    return next((path for path in candidates if _has_binaries(path)), None)


def _free_port() -> int:
    """Ask the kernel for a free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class PostgresServer:
    """One throwaway PostgreSQL cluster (see the module docstring)."""

    def __init__(self, bindir: Path, *, database: str = "lepton_test") -> None:
        """Prepare (not start) a cluster using the binaries in ``bindir``."""
        if not _has_binaries(bindir):
            raise PostgresServerError(
                "postgres-missing",
                f"{bindir} lacks one of {', '.join(_REQUIRED)}: {INSTALL_HINT}",
            )
        if _DATABASE_RE.fullmatch(database) is None:
            raise PostgresServerError(
                "postgres-invalid-name",
                f"database name {database!r}: use lower-case letters, digits and '_'",
            )
        self.bindir = bindir
        self.database = database
        self.port: int | None = None
        self._root: Path | None = None
        self._as_root = os.geteuid() == 0

    # ------------------------------------------------------------------ paths

    @property
    def directory(self) -> Path:
        """The cluster's temp dir (data in ``data/``, socket and log beside it)."""
        if self._root is None:
            raise PostgresServerError("postgres-start-failed", "the server is not started")
        return self._root

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the test database (psycopg 3 driver, TCP on 127.0.0.1)."""
        if self.port is None:
            raise PostgresServerError("postgres-start-failed", "the server is not started")
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{self.database}"

    # ------------------------------------------------------------------ commands

    def _run(self, *args: str, timeout: float = _START_TIMEOUT_S) -> str:
        """Run a server binary as the server user; return stdout, or raise with its output."""
        command = [str(self.bindir / args[0]), *args[1:]]
        if self._as_root:
            command = ["runuser", "-u", _SERVER_USER, "--", *command]
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.directory,
            check=False,
            env={**os.environ, "LC_ALL": "C"},
        )
        if result.returncode != 0:
            raise PostgresServerError(
                "postgres-command-failed",
                f"`{shlex.join(command)}` exited {result.returncode}: "
                f"{(result.stderr or result.stdout).strip()}{self._log_tail()}",
            )
        return result.stdout

    def _log_tail(self) -> str:
        """The end of the server log, for error messages."""
        log = self.directory / "postgres.log"
        try:
            text = log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return f"\n--- {log} (end) ---\n{text[-_LOG_TAIL_CHARS:]}" if text else ""

    def _make_directory(self) -> Path:
        """Create the private temp dir, owned by the server user when we are root."""
        root = Path(tempfile.mkdtemp(prefix="lepton-pg-"))
        if self._as_root:
            try:
                user = pwd.getpwnam(_SERVER_USER)
            except KeyError as err:
                root.rmdir()
                raise PostgresServerError(
                    "postgres-user-missing",
                    f"running as root, but there is no {_SERVER_USER!r} OS user to run "
                    f"PostgreSQL as (it refuses root): {INSTALL_HINT}",
                ) from err
            os.chown(root, user.pw_uid, user.pw_gid)
        return root

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> str:
        """initdb, start on 127.0.0.1 on a free port, create the database; return its URL."""
        if self._root is not None:
            return self.url
        self._root = self._make_directory()
        try:
            self._run(
                "initdb",
                "--pgdata",
                str(self._root / "data"),
                "--username",
                "postgres",
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--no-locale",
                "--no-sync",
            )
            self.port = _free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -p {self.port} "
                f"-k {shlex.quote(str(self._root))} -c fsync=off -c full_page_writes=off"
            )
            self._run(
                "pg_ctl",
                "start",
                "--pgdata",
                str(self._root / "data"),
                "--log",
                str(self._root / "postgres.log"),
                "--wait",
                "--timeout",
                str(_START_TIMEOUT_S),
                "-o",
                options,
            )
            self._create_database()
        except BaseException as err:
            self.stop()
            if isinstance(err, PostgresServerError | subprocess.TimeoutExpired):
                raise PostgresServerError(
                    "postgres-start-failed", f"could not start a test PostgreSQL: {err}"
                ) from err
            raise
        return self.url

    def _create_database(self) -> None:
        """Create the test database over TCP (this also proves the server is ready)."""
        with psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user="postgres",
            dbname="postgres",
            autocommit=True,
            connect_timeout=10,
        ) as connection:
            connection.execute(f"CREATE DATABASE \"{self.database}\" ENCODING 'UTF8'")  # noqa: S608

    def stop(self) -> None:
        """Stop this cluster (``pg_ctl stop -m fast`` on its data dir) and remove its dir."""
        if self._root is None:
            return
        data = self._root / "data"
        try:
            if (data / "postmaster.pid").exists():
                try:
                    self._run("pg_ctl", "stop", "--pgdata", str(data), "--mode", "fast", "--wait")
                except (PostgresServerError, subprocess.TimeoutExpired):
                    self._run("pg_ctl", "stop", "--pgdata", str(data), "--mode", "immediate")
        finally:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None
            self.port = None

    def __enter__(self) -> PostgresServer:
        """Start the server for a ``with`` block."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop the server at the end of a ``with`` block."""
        self.stop()
