"""A RabbitMQ node that lives wholly in one folder, started from the local ``rabbitmq-server``.

Used by ``make run`` (a fixed port, data under ``.var/rabbitmq``) and by the test suite (free
ports, a temporary folder). Every process it starts it stops again by PID: the server wrapper, and
the ``epmd`` it starts for the node on a port of its own.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

RABBIT_BIN = Path(os.environ.get("RABBITMQ_BIN_DIR", "/usr/lib/rabbitmq/bin"))


class BrokerUnavailable(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def rabbitmq_installed() -> bool:
    return (RABBIT_BIN / "rabbitmq-server").exists()


def install_rabbitmq() -> None:
    """apt-get install rabbitmq-server (root only); the package's own service start is harmless without systemd."""
    if os.geteuid() != 0:
        raise BrokerUnavailable(
            "rabbitmq-server is not installed. Install it with `sudo apt-get install -y rabbitmq-server`, "
            "or point AMQP_URL at a running broker."
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "rabbitmq-server"], check=True, env=env)


def _epmd_binary() -> str:
    found = shutil.which("epmd")
    if not found:
        raise BrokerUnavailable("epmd (Erlang) not found: install rabbitmq-server")
    return found


@dataclass
class RabbitNode:
    """One node. ``start()`` returns when it accepts AMQP; ``stop()`` ends every process it started."""

    home: Path
    amqp_port: int = field(default_factory=free_port)
    management_port: int = field(default_factory=free_port)
    prometheus_port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)
    epmd_port: int = field(default_factory=free_port)
    management: bool = True
    name: str = ""
    _server: subprocess.Popen | None = None
    _epmd: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        self.home = Path(self.home).resolve()
        if not self.name:
            self.name = f"oms{self.amqp_port}@localhost"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.management_port}"

    @property
    def pid_file(self) -> Path:
        return self.home / "rabbit.pid"

    @property
    def log_file(self) -> Path:
        return self.home / "server.log"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")}
        env.update(
            HOME=str(self.home),
            RABBITMQ_NODENAME=self.name,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.amqp_port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            ERL_EPMD_PORT=str(self.epmd_port),
            RABBITMQ_MNESIA_BASE=str(self.home / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.home / "log"),
            RABBITMQ_PID_FILE=str(self.pid_file),
            RABBITMQ_CONFIG_FILE=str(self.home / "rabbitmq"),  # .conf is added by the server
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.home / "enabled_plugins"),
            RABBITMQ_CONF_ENV_FILE=str(self.home / "rabbitmq-env.conf"),
            RABBITMQ_LOGS="-",
        )
        return env

    def _write_config(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "log").mkdir(exist_ok=True)
        (self.home / "rabbitmq-env.conf").write_text("")
        cookie = self.home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(os.urandom(16).hex().upper())
            cookie.chmod(0o600)
        plugins = ["rabbitmq_prometheus"] + (["rabbitmq_management"] if self.management else [])
        (self.home / "enabled_plugins").write_text(f"[{','.join(plugins)}].\n")
        lines = [
            f"prometheus.tcp.port = {self.prometheus_port}",
            "prometheus.tcp.ip = 127.0.0.1",
            "log.console = true",
            "log.console.level = warning",
            "log.file = false",
        ]
        if self.management:
            lines += [f"management.tcp.port = {self.management_port}", "management.tcp.ip = 127.0.0.1"]
        (self.home / "rabbitmq.conf").write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 90.0) -> RabbitNode:
        if not rabbitmq_installed():
            raise BrokerUnavailable("rabbitmq-server is not installed (apt-get install rabbitmq-server)")
        self._write_config()
        env = self.env()
        self._epmd = subprocess.Popen(
            [_epmd_binary(), "-port", str(self.epmd_port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        log = self.log_file.open("ab")
        self._server = subprocess.Popen(
            [str(RABBIT_BIN / "rabbitmq-server")],
            env=env,
            cwd=self.home,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        try:
            self.await_startup(timeout)
        except BaseException:
            self.stop()  # a node that did not come up must not outlive the caller that gave up on it
            raise
        return self

    def ctl(self, *args: str, timeout: float = 60.0, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(RABBIT_BIN / "rabbitmqctl"), "-n", self.name, *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    def await_startup(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._server is not None and self._server.poll() is not None:
                raise BrokerUnavailable(f"rabbitmq-server exited early; see {self.log_file}")
            if port_open(self.amqp_port):
                with contextlib.suppress(subprocess.SubprocessError):
                    if self.ctl("await_startup", "--timeout", "30", timeout=40, check=False).returncode == 0:
                        return
            time.sleep(0.25)
        raise BrokerUnavailable(f"RabbitMQ did not start within {timeout:.0f}s; see {self.log_file}")

    def beam_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int(self.pid_file.read_text().strip())
        return None

    def kill(self) -> None:
        """``kill -9`` the Erlang VM (a crash, for fault tests); ``start()`` brings the node back."""
        pid = self.beam_pid()
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self._server is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._server.wait(timeout=30)
        self._stop_epmd()

    def stop(self, timeout: float = 60.0) -> None:
        server, self._server = self._server, None
        if server is not None and server.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pid = self.beam_pid()
                if pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                server.kill()
                server.wait(timeout=10)
        self._kill_orphaned_vm()
        self._stop_epmd()
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()

    def _kill_orphaned_vm(self) -> None:
        """The Erlang VM named in this node's pid file, if it outlived its wrapper (a wrapper killed
        before it could pass the stop on), is killed: nothing this node started may keep running."""
        pid = self.beam_pid()
        if pid is None:
            return
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if self.name.encode() in cmdline:
                os.kill(pid, signal.SIGKILL)

    def _stop_epmd(self) -> None:
        epmd, self._epmd = self._epmd, None
        if epmd is not None and epmd.poll() is None:
            epmd.terminate()
            try:
                epmd.wait(timeout=10)
            except subprocess.TimeoutExpired:
                epmd.kill()
                epmd.wait(timeout=10)
