"""The whole OMS on this machine: five service processes, their databases, an SMTP sink, the
payment providers' stand-ins.

Used by ``make run`` (``omstools.run``, fixed ports, supervision on) and by the integration tests
(free ports, a temporary var dir, supervision off so a test can kill a service and watch).

Every process is started in its own session (its own process group), writes to
``<var>/logs/<name>.log`` and is stopped by its PID: SIGTERM, a deadline, then SIGKILL.

With ``replicas`` N, every service runs in N processes (CONTRACT §1): replica ``r`` of a service
is the process named ``<service>`` (r = 0) or ``<service>-<r>``, listening on the service's port
plus ``100 × r``. Every method that takes a process name takes these.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from omstools.rabbit import free_port, port_open
from omstools.standins import paypal as paypal_standin
from omstools.standins import stripe as stripe_standin
from omstools.standins import wechat_pay as wechat_standin
from omstools.standins.alipay import ensure_keys

SERVICES: tuple[str, ...] = ("orders", "inventory", "payments", "shipping", "notifications")
DEFAULT_PORTS: dict[str, int] = {
    "orders": 8000,
    "inventory": 8001,
    "payments": 8002,
    "shipping": 8003,
    "notifications": 8004,
}
SMTP = "smtp-sink"
STANDINS: dict[str, int] = {"alipay": 8011, "stripe": 8012, "wechat_pay": 8013, "paypal": 8014}
"""The payment providers' stand-ins of local runs and tests, and their default ports (the card
processor's, ``stripe``, only when ``card_processor`` names it)."""
STANDIN_APP_ID = "2021000000000000"
REPLICA_PORT_STEP = 100


def replica_name(svc: str, replica: int) -> str:
    return svc if replica == 0 else f"{svc}-{replica}"


def split_name(name: str, services: Iterable[str] = SERVICES) -> tuple[str, int]:
    """``orders-1`` → (``orders``, 1); ``orders`` → (``orders``, 0)."""
    svc, _, replica = name.rpartition("-")
    return (svc, int(replica)) if svc in services and replica.isdigit() else (name, 0)


class StartupError(RuntimeError):
    """A service would not migrate, start or become ready; the message names its log."""


def _python_module(svc: str, command: str) -> list[str]:
    return [sys.executable, "-m", svc, command]


def log_tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


@dataclass
class _Proc:
    popen: subprocess.Popen
    started_at: float


@dataclass
class System:
    var_dir: Path
    amqp_url: str
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    smtp_port: int = 8025
    standin_ports: dict[str, int] = field(default_factory=lambda: dict(STANDINS))
    card_processor: str = "stripe"  # cards through the stripe SDK to its stand-in; "sandbox": in-process
    host: str = "127.0.0.1"
    services: tuple[str, ...] = SERVICES
    replicas: int = 1  # processes per service
    # Soft defaults the caller's environment may override (OMS_ENV, LOG_JSON, simulation, ...).
    defaults: dict[str, str] = field(default_factory=dict)
    # Always applied, over the caller's environment: for all services, and per service.
    env: dict[str, str] = field(default_factory=dict)
    service_env: dict[str, dict[str, str]] = field(
        default_factory=dict
    )  # by service, or by one replica's name
    # argv for ``(service, command)``; ``python -m <service> <command>`` with this interpreter.
    command: Callable[[str, str], list[str]] = _python_module
    # Supervision (make run): restart a service that dies after a back-off growing 1 s → 30 s.
    backoff_initial: float = 1.0
    backoff_max: float = 30.0
    stable_after: float = 60.0  # a process that lived this long gets the initial back-off again
    report: Callable[[str], None] = field(default=lambda line: print(f"[oms] {line}", flush=True))

    _procs: dict[str, _Proc] = field(default_factory=dict, init=False, repr=False)
    _wanted: set[str] = field(default_factory=set, init=False, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False, repr=False)
    _supervisor: threading.Thread | None = field(default=None, init=False, repr=False)
    _halt: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _backoff: dict[str, float] = field(default_factory=dict, init=False, repr=False)
    restarts: dict[str, int] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.var_dir = Path(self.var_dir).resolve()
        for svc in self.services:
            if svc not in self.ports:
                self.ports[svc] = free_port()

    @classmethod
    def on_free_ports(cls, var_dir: Path, amqp_url: str, **kwargs) -> System:
        """A system for tests: every process's HTTP port and the SMTP port picked free."""
        services, replicas = kwargs.get("services", SERVICES), kwargs.get("replicas", 1)
        ports = {replica_name(s, r): free_port() for s in services for r in range(replicas)}
        return cls(
            var_dir,
            amqp_url,
            ports=ports,
            smtp_port=free_port(),
            standin_ports={name: free_port() for name in STANDINS},
            **kwargs,
        )

    # ---- where things are ---------------------------------------------------------------
    @property
    def logs_dir(self) -> Path:
        return self.var_dir / "logs"

    @property
    def mail_dir(self) -> Path:
        return self.var_dir / "mail"

    def log_path(self, name: str) -> Path:
        return self.logs_dir / f"{name}.log"

    @property
    def processes(self) -> list[str]:
        """Every service process's name: each service's replicas, in order."""
        return [replica_name(svc, r) for svc in self.services for r in range(self.replicas)]

    def replicas_of(self, svc: str) -> list[str]:
        return [replica_name(svc, r) for r in range(self.replicas)]

    def port(self, name: str) -> int:
        """The process's own entry in ``ports``, else its service's port plus 100 × its replica."""
        if name in self.ports:
            return self.ports[name]
        svc, replica = split_name(name, self.services)
        return self.ports[svc] + REPLICA_PORT_STEP * replica

    def url(self, svc: str) -> str:
        """The HTTP base URL of a service (its replica 0) or of one replica (``orders-1``)."""
        return f"http://{self.host}:{self.port(svc)}"

    def pid(self, svc: str) -> int | None:
        proc = self._procs.get(svc)
        return proc.popen.pid if proc and proc.popen.poll() is None else None

    def running(self, svc: str) -> bool:
        return self.pid(svc) is not None

    def standin_url(self, provider: str) -> str:
        return f"http://{self.host}:{self.standin_ports[provider]}"

    def standin_dir(self, provider: str) -> Path:
        return self.var_dir / "standins" / provider

    def _standin_env(self) -> dict[str, str]:
        """Payments' configuration of the providers, pointed at their stand-ins (soft: the caller's
        environment may name the real providers instead). The keys are made on first use."""
        env: dict[str, str] = {}
        if "alipay" in self.standins:
            folder = self.standin_dir("alipay")
            ensure_keys(folder)
            env.update(
                {
                    "PAYMENTS_ALIPAY_GATEWAY": f"{self.standin_url('alipay')}/gateway.do",
                    "PAYMENTS_ALIPAY_APP_ID": STANDIN_APP_ID,
                    "PAYMENTS_ALIPAY_PRIVATE_KEY_FILE": str(folder / "app_private.pem"),
                    "PAYMENTS_ALIPAY_PUBLIC_KEY_FILE": str(folder / "alipay_public.pem"),
                }
            )
        if "wechat_pay" in self.standins:
            keys = wechat_standin.ensure_keys(self.standin_dir("wechat_pay"))
            env.update(
                {
                    "PAYMENTS_WECHAT_PAY_BASE_URL": self.standin_url("wechat_pay"),
                    "PAYMENTS_WECHAT_PAY_MCHID": wechat_standin.MCHID,
                    "PAYMENTS_WECHAT_PAY_APPID": wechat_standin.APPID,
                    "PAYMENTS_WECHAT_PAY_SERIAL_NO": wechat_standin.MERCHANT_SERIAL,
                    "PAYMENTS_WECHAT_PAY_PRIVATE_KEY_FILE": str(keys["app_private"]),
                    "PAYMENTS_WECHAT_PAY_PLATFORM_PUBLIC_KEY_FILE": str(keys["platform_public"]),
                    "PAYMENTS_WECHAT_PAY_PLATFORM_SERIAL": wechat_standin.PLATFORM_SERIAL,
                    "PAYMENTS_WECHAT_PAY_APIV3_KEY_FILE": str(keys["apiv3_key"]),
                }
            )
        if "paypal" in self.standins:
            env.update(
                {
                    "PAYMENTS_PAYPAL_BASE_URL": self.standin_url("paypal"),
                    "PAYMENTS_PAYPAL_CLIENT_ID": paypal_standin.CLIENT_ID,
                    "PAYMENTS_PAYPAL_CLIENT_SECRET": paypal_standin.CLIENT_SECRET,
                    "PAYMENTS_PAYPAL_WEBHOOK_ID": paypal_standin.WEBHOOK_ID,
                }
            )
        if "stripe" in self.standins:
            env.update(
                {
                    "PAYMENTS_STRIPE_API_KEY": stripe_standin.API_KEY,
                    "PAYMENTS_STRIPE_API_BASE": self.standin_url("stripe"),
                    "PAYMENTS_STRIPE_WEBHOOK_SECRET": stripe_standin.WEBHOOK_SECRET,
                }
            )
        return env

    @property
    def standins(self) -> list[str]:
        return [p for p in self.standin_ports if p != "stripe" or self.card_processor == "stripe"]

    def env_for(self, name: str) -> dict[str, str]:
        svc, _ = split_name(name, self.services)
        prefix = svc.upper()
        env = {
            "OMS_ENV": "local",
            "LOG_JSON": "false",
            **(self._standin_env() if svc == "payments" else {}),
            **self.defaults,
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "AMQP_URL": self.amqp_url,
            "OMS_VAR_DIR": str(self.var_dir),
            f"{prefix}_HTTP_HOST": self.host,
            f"{prefix}_HTTP_PORT": str(self.port(name)),
            "NOTIFICATIONS_SMTP_HOST": self.host,
            "NOTIFICATIONS_SMTP_PORT": str(self.smtp_port),
            # where the orders console reads low stock and payments, and sends an admin's changes
            **{
                f"ORDERS_{peer.upper()}_URL": self.url(peer)
                for peer in ("inventory", "payments")
                if peer in self.ports
            },
        }
        env.update(self.env)
        env.update(self.service_env.get(svc, {}))  # every replica of the service
        if name != svc:
            env.update(self.service_env.get(name, {}))  # this replica only
        return env

    # ---- set-up -------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str], env: Mapping[str, str]) -> subprocess.Popen:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path(name).open("ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv[1:])}\n".encode())
            log.flush()
            return subprocess.Popen(
                argv,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _run_all(self, command: str, services: Iterable[str], timeout: float) -> None:
        """Run ``python -m <svc> <command>`` for the services at once; fail naming the ones that failed."""
        self.var_dir.mkdir(parents=True, exist_ok=True)
        running = {svc: self._spawn(svc, self.command(svc, command), self.env_for(svc)) for svc in services}
        deadline = time.monotonic() + timeout
        failed: list[str] = []
        for svc, popen in running.items():
            try:
                code = popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _terminate(popen, grace=5)
                code = None
            if code != 0:
                failed.append(
                    f"{svc} {command} {'timed out' if code is None else f'exited {code}'}; "
                    f"see {self.log_path(svc)}:\n{log_tail(self.log_path(svc))}"
                )
        if failed:
            raise StartupError("\n".join(failed))

    def migrate(self, timeout: float = 180.0) -> None:
        self._run_all("migrate", self.services, timeout)

    def seed(self, timeout: float = 120.0) -> None:
        if "inventory" in self.services:
            self._run_all("seed", ["inventory"], timeout)

    def start_smtp(self, timeout: float = 30.0) -> None:
        argv = [
            sys.executable,
            "-m",
            "omstools.smtp_sink",
            "--port",
            str(self.smtp_port),
            "--dir",
            str(self.mail_dir),
        ]
        with self._lock:
            self._procs[SMTP] = _Proc(self._spawn(SMTP, argv, os.environ), time.monotonic())
        deadline = time.monotonic() + timeout
        while not port_open(self.smtp_port, self.host):
            popen = self._procs[SMTP].popen
            if popen.poll() is not None or time.monotonic() > deadline:
                raise StartupError(
                    f"the SMTP sink did not start; see {self.log_path(SMTP)}:\n"
                    f"{log_tail(self.log_path(SMTP))}"
                )
            time.sleep(0.05)

    def start_standins(self, timeout: float = 30.0) -> None:
        """The payment providers' stand-ins (their keys generated on first use), each until it listens."""
        for provider in self.standins:
            port, folder = self.standin_ports[provider], self.standin_dir(provider)
            argv = [
                sys.executable,
                "-m",
                f"omstools.standins.{provider}",
                "--host",
                self.host,
                "--port",
                str(port),
                "--dir",
                str(folder),
            ]
            if provider == "alipay":
                ensure_keys(folder)
                argv += ["--app-id", STANDIN_APP_ID]
            elif provider == "wechat_pay":
                wechat_standin.ensure_keys(folder)
            elif provider == "paypal":
                argv += ["--webhook-url", f"{self.url('payments')}/v1/providers/paypal/notify"]
            else:  # the card processor: its webhooks go to payments, its tok_late as late as the sandbox's
                late = self.env.get("PAYMENTS_LATE_CAPTURE_SECONDS") or os.environ.get(
                    "PAYMENTS_LATE_CAPTURE_SECONDS", "15"
                )
                argv += [
                    "--webhook-url",
                    f"{self.url('payments')}/v1/providers/stripe/notify",
                    "--late-seconds",
                    late,
                ]
            name = f"standin-{provider}"
            with self._lock:
                self._procs[name] = _Proc(self._spawn(name, argv, os.environ), time.monotonic())
            deadline = time.monotonic() + timeout
            while not port_open(port, self.host):
                if self._procs[name].popen.poll() is not None or time.monotonic() > deadline:
                    raise StartupError(
                        f"the {provider} stand-in did not start; see {self.log_path(name)}:\n"
                        f"{log_tail(self.log_path(name))}"
                    )
                time.sleep(0.05)

    # ---- the service processes ----------------------------------------------------------
    def start(self, svc: str) -> int:
        """Start ``python -m <service> serve`` as the process ``svc`` (a service or one replica's
        name; no-op if it runs); returns its PID."""
        with self._lock:
            self._wanted.add(svc)
            if self.running(svc):
                return self._procs[svc].popen.pid
            popen = self._spawn(
                svc, self.command(split_name(svc, self.services)[0], "serve"), self.env_for(svc)
            )
            self._procs[svc] = _Proc(popen, time.monotonic())
            return popen.pid

    def start_all(self) -> None:
        for name in self.processes:
            self.start(name)

    def ready(self, svc: str) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{self.url(svc)}/readyz", timeout=2.0).status_code == 200
        return False

    def wait_ready(self, services: Iterable[str] | None = None, timeout: float = 120.0) -> None:
        """Until every ``/readyz`` answers 200 (every process's, unless ``services`` names some); a
        process that exits meanwhile fails at once (unless supervised)."""
        pending = list(services or self.processes)
        deadline = time.monotonic() + timeout
        while pending:
            for svc in list(pending):
                proc = self._procs.get(svc)
                if proc is None:
                    if self.supervising and svc in self._wanted:
                        continue  # between a death and its restart
                    raise StartupError(f"{svc} was never started")
                code = proc.popen.poll()
                if code is not None and not self.supervising:
                    raise StartupError(
                        f"{svc} exited with code {code} before it was ready; "
                        f"see {self.log_path(svc)}:\n{log_tail(self.log_path(svc))}"
                    )
                if code is None and self.ready(svc):
                    pending.remove(svc)
            if pending and time.monotonic() > deadline:
                details = "\n".join(
                    f"--- {s} ({self.log_path(s)}):\n{log_tail(self.log_path(s), 15)}" for s in pending
                )
                raise StartupError(f"not ready after {timeout:.0f}s: {', '.join(pending)}\n{details}")
            if pending:
                time.sleep(0.1)

    def kill(self, svc: str) -> None:
        """SIGKILL one service (a crash, for fault tests). Supervised, it comes back after the back-off."""
        proc = self._procs.get(svc)
        if proc is not None and proc.popen.poll() is None:
            _signal_group(proc.popen, signal.SIGKILL)
            proc.popen.wait(timeout=30)

    def stop_service(self, svc: str, grace: float = 20.0) -> None:
        with self._lock:
            self._wanted.discard(svc)
            proc = self._procs.pop(svc, None)
        if proc is not None:
            _terminate(proc.popen, grace)

    def restart(
        self, svc: str, env: Mapping[str, str] | None = None, *, wait: bool = True, timeout: float = 120.0
    ) -> None:
        """Stop (SIGTERM) and start one service, with extra environment if given; wait until it is ready."""
        if env is not None:
            self.service_env.setdefault(svc, {}).update(env)
        self.stop_service(svc)
        self.start(svc)
        if wait:
            self.wait_ready([svc], timeout)

    def up(self, *, seed: bool = True, smtp: bool = True, timeout: float = 120.0) -> System:
        """Migrate, seed, start the SMTP sink, the payment stand-ins and every service, wait until all
        are ready."""
        self.migrate()
        if seed:
            self.seed()
        if smtp:
            self.start_smtp()
        self.start_standins()
        self.start_all()
        self.wait_ready(timeout=timeout)
        return self

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM every process started here, SIGKILL those still alive after ``grace`` seconds."""
        self.stop_supervising()
        with self._lock:
            procs, self._procs = self._procs, {}
            self._wanted.clear()
        live = [p.popen for p in procs.values() if p.popen.poll() is None]
        for popen in live:
            with contextlib.suppress(ProcessLookupError):
                popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for popen in live:
            try:
                popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(popen, signal.SIGKILL)
                popen.wait(timeout=30)

    def __enter__(self) -> System:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- supervision --------------------------------------------------------------------
    @property
    def supervising(self) -> bool:
        return self._supervisor is not None and self._supervisor.is_alive()

    def supervise(self) -> None:
        """From now on, a wanted service whose process died is started again after a back-off."""
        if self.supervising:
            return
        self._halt.clear()
        self._supervisor = threading.Thread(target=self._supervise, name="oms-supervisor", daemon=True)
        self._supervisor.start()

    def stop_supervising(self) -> None:
        thread, self._supervisor = self._supervisor, None
        self._halt.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)

    def _supervise(self) -> None:
        due: dict[str, float] = {}  # service -> when to start it again
        while not self._halt.wait(0.1):
            now = time.monotonic()
            with self._lock:
                for svc in list(self._wanted):
                    proc = self._procs.get(svc)
                    if proc is None or proc.popen.poll() is None:
                        continue
                    if svc not in due:
                        lived = now - proc.started_at
                        delay = self._next_backoff(svc, lived)
                        due[svc] = now + delay
                        self.report(
                            f"{svc} exited with code {proc.popen.returncode} after {lived:.1f}s; "
                            f"restarting in {delay:g}s (log: {self.log_path(svc)})"
                        )
                    elif now >= due[svc]:
                        del due[svc]
                        self._procs.pop(svc, None)
                        pid = self.start(svc)
                        self.restarts[svc] = self.restarts.get(svc, 0) + 1
                        self.report(f"{svc} restarted (pid {pid}, restart #{self.restarts[svc]})")
                for svc in list(due):
                    if svc not in self._wanted:
                        del due[svc]

    def _next_backoff(self, svc: str, lived: float) -> float:
        previous = self._backoff.get(svc)
        if previous is None or lived >= self.stable_after:
            delay = self.backoff_initial
        else:
            delay = min(previous * 2, self.backoff_max)
        self._backoff[svc] = delay
        return delay


def _signal_group(popen: subprocess.Popen, sig: int) -> None:
    """Signal the process group the child leads (started with start_new_session).

    Only while the child is not yet reaped, so its PID (= the group's id) is still ours.
    """
    if popen.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(popen.pid, sig)


def _terminate(popen: subprocess.Popen, grace: float) -> None:
    if popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            _signal_group(popen, signal.SIGKILL)
            popen.wait(timeout=30)
