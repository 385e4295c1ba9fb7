"""A PostgreSQL server that lives wholly in one folder, started from the local ``postgresql`` package.

Used by ``OMS_DATABASE=postgres make run`` (data kept under ``.var/postgres``) and by the test
suite (a free port, a temporary folder). The cluster is made with ``initdb`` (superuser ``oms``,
trust authentication, listening on 127.0.0.1 and a socket in its folder only); as root, the server
runs as the ``postgres`` user, since PostgreSQL refuses root. ``stop()`` ends the server by its PID.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from omstools.rabbit import free_port

USER = "oms"


class PostgresUnavailable(RuntimeError):
    pass


def bindir() -> Path | None:
    """The newest installed PostgreSQL's programs (``/usr/lib/postgresql/<version>/bin``)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


def install_postgresql() -> None:
    """apt-get install postgresql (root only); the package's own cluster is left alone."""
    if os.geteuid() != 0:
        raise PostgresUnavailable(
            "PostgreSQL is not installed. Install it with `sudo apt-get install -y postgresql`, "
            "or run without OMS_DATABASE=postgres (SQLite)."
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "postgresql"], check=True, env=env)


def run_as() -> str | None:
    """PostgreSQL refuses to run as root: as root, run it as the ``postgres`` user (or nobody)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise PostgresUnavailable(
        "running as root and there is no 'postgres' or 'nobody' user to run PostgreSQL as"
    )


def reachable(path: Path, user: str | None) -> bool:
    """Whether ``user`` (None: we) can get into the folder ``path``: the server needs its data
    folder, and a project under root's home (mode 700) is out of the ``postgres`` user's reach."""
    if user is None:
        return True
    return subprocess.run(["test", "-x", str(path)], user=user, capture_output=True).returncode == 0


@dataclass
class PostgresServer:
    """One server. ``start()`` returns once it accepts connections; ``stop()`` ends it."""

    home: Path
    port: int = field(default_factory=free_port)
    max_connections: int = 400  # N replicas of five services, each with a pool
    user: str | None = field(default=None, init=False)  # whom the server runs as (set by start)
    _server: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        self.home = Path(self.home).resolve()

    @property
    def bin(self) -> Path:
        found = bindir()
        if found is None:
            raise PostgresUnavailable("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/postgres)")
        return found

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def log_file(self) -> Path:
        return self.home / "server.log"

    @property
    def url(self) -> str:
        """The maintenance database's URL, for SQLAlchemy with asyncpg."""
        return self.database_url("postgres")

    def database_url(self, name: str) -> str:
        return f"postgresql+asyncpg://{USER}@127.0.0.1:{self.port}/{name}"

    @property
    def pid(self) -> int | None:
        return self._server.pid if self._server is not None and self._server.poll() is None else None

    def start(self, timeout: float = 60.0) -> PostgresServer:
        self.user = run_as()
        self.home.mkdir(parents=True, exist_ok=True)
        if self.user:
            shutil.chown(self.home, self.user)
        if not (self.data / "PG_VERSION").exists():  # kept between runs
            subprocess.run(
                [
                    str(self.bin / "initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    USER,
                    "--auth=trust",
                    "--no-sync",
                    "-E",
                    "UTF8",
                    "--locale=C",
                ],
                user=self.user,
                check=True,
                capture_output=True,
                timeout=120,
            )
        with open(self.log_file, "ab") as log:
            self._server = subprocess.Popen(
                [
                    str(self.bin / "postgres"),
                    "-D",
                    str(self.data),
                    "-p",
                    str(self.port),
                    "-k",
                    str(self.home),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "fsync=off",
                    "-c",
                    f"max_connections={self.max_connections}",
                ],
                user=self.user,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not self.accepting():
            if self._server.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self.log_file.read_text(errors="replace")[-2000:]
                raise PostgresUnavailable(f"PostgreSQL did not start; see {self.log_file}:\n{tail}")
            time.sleep(0.1)
        return self

    def accepting(self) -> bool:
        return (
            subprocess.run(
                [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)], capture_output=True
            ).returncode
            == 0
        )

    def psql(self, sql: str, database: str = "postgres") -> str:
        done = subprocess.run(
            [
                str(self.bin / "psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                USER,
                "-d",
                database,
                "-v",
                "ON_ERROR_STOP=1",
                "-tAc",
                sql,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise PostgresUnavailable(f"psql failed: {done.stderr.strip()}")
        return done.stdout

    def ensure_databases(self, names: list[str]) -> None:
        """Create the databases that are not there yet."""
        existing = set(self.psql("SELECT datname FROM pg_database").split())
        for name in names:
            if name not in existing:
                self.psql(f'CREATE DATABASE "{name}"')

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT), SIGKILL if it is still there after ``timeout``."""
        server, self._server = self._server, None
        if server is None or server.poll() is not None:
            return
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
