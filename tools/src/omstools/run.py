"""``make run``: a broker, the databases, demo data, all five services; in the foreground until Ctrl-C.

The broker (CONTRACT §1), first that applies:
1. ``AMQP_URL`` when set;
2. a broker already answering AMQP on 127.0.0.1:5672 (used, never stopped);
3. a RabbitMQ node started here from ``rabbitmq-server``, data kept in ``.var/rabbitmq``, on
   127.0.0.1:5672 (management 15672); installed with apt-get first when missing and we are root;
4. a RabbitMQ container through testcontainers when a Docker engine answers;
5. else a clear error saying what to install.

The databases: SQLite files under ``.var`` by default. With ``OMS_DATABASE=postgres``, a
PostgreSQL server started here from the ``postgresql`` package (installed with apt-get first when
missing and we are root), data kept in ``.var/postgres`` (as root, under ``/var/lib/oms`` when
the ``postgres`` user it runs as cannot reach the project), on 127.0.0.1:5433 (or a free port when
that is taken), with one database per service, named after it. A service's own
``<SERVICE>_DATABASE_URL`` still wins.

Then: migrate, seed, SMTP sink, the five services (``OMS_REPLICAS`` processes of each, default 1;
replica r on the service's port + 100·r), ``OMS ready`` and every URL. A process that dies is
started again after a back-off (1 s doubling to 30 s). Ctrl-C or SIGTERM stops every process
started here, the broker and PostgreSQL too if they were started here, and exits 0.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from omstools.postgres import (
    PostgresServer,
    PostgresUnavailable,
    bindir,
    install_postgresql,
    reachable,
    run_as,
)
from omstools.rabbit import (
    BrokerUnavailable,
    RabbitNode,
    free_port,
    install_rabbitmq,
    port_open,
    rabbitmq_installed,
)
from omstools.system import DEFAULT_PORTS, SERVICES, STANDINS, StartupError, System, replica_name, split_name

AMQP_PORT = 5672
MANAGEMENT_PORT = 15672
PROMETHEUS_PORT = 15692
SMTP_PORT = 8025
POSTGRES_PORT = 5433
DEFAULTS = {
    "OMS_ENV": "local",
    "LOG_JSON": "false",
    "SHIPPING_CARRIER_SIMULATION": "true",
    "PAYMENTS_PROVIDER_TIMEOUT_SECONDS": "10",
}


def say(line: str) -> None:
    print(f"[oms] {line}", flush=True)


class Stopped(Exception):
    """Ctrl-C or SIGTERM."""


@dataclass
class Broker:
    url: str
    management_url: str | None
    what: str
    stop: Callable[[], None] | None = None  # set when this run started it


def answers_amqp(port: int, host: str = "127.0.0.1", timeout: float = 2.0) -> bool:
    """A broker answers the AMQP 0-9-1 protocol header with a Connection.Start frame (type 1, channel 0)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"AMQP\x00\x00\x09\x01")
            return s.recv(3) == b"\x01\x00\x00"
    except OSError:
        return False


def _port_or_free(port: int) -> int:
    return free_port() if port_open(port) else port


def docker_available() -> bool:
    try:
        import docker

        docker.from_env().ping()
        return True
    except Exception:
        return False


def _local_node(var_dir: Path, cleanups: list[Callable[[], None]]) -> Broker:
    management = _port_or_free(MANAGEMENT_PORT)
    node = RabbitNode(
        var_dir / "rabbitmq",
        amqp_port=AMQP_PORT,
        management_port=management,
        prometheus_port=_port_or_free(PROMETHEUS_PORT),
        name="oms@localhost",  # fixed: the node's data folder is named after it, kept between runs
    )
    cleanups.append(node.stop)
    say(f"starting RabbitMQ (data in {node.home}, log {node.log_file})")
    node.start()
    return Broker(node.url, node.management_url, "RabbitMQ started by this run", stop=node.stop)


def _container(cleanups: list[Callable[[], None]]) -> Broker:
    from testcontainers.rabbitmq import RabbitMqContainer

    say("starting RabbitMQ in Docker (testcontainers)")
    container = RabbitMqContainer("rabbitmq:3.13-management")
    container.with_exposed_ports(15672)
    cleanups.append(container.stop)
    container.start()
    params = container.get_connection_params()
    host = container.get_container_host_ip()
    management = f"http://{host}:{container.get_exposed_port(15672)}"
    return Broker(
        f"amqp://guest:guest@{params.host}:{params.port}/",
        management,
        "RabbitMQ in Docker",
        stop=container.stop,
    )


def get_broker(var_dir: Path, cleanups: list[Callable[[], None]]) -> Broker:
    if os.environ.get("AMQP_URL"):
        return Broker(os.environ["AMQP_URL"], None, "AMQP_URL")
    if answers_amqp(AMQP_PORT):
        return Broker(
            f"amqp://guest:guest@127.0.0.1:{AMQP_PORT}/",
            f"http://127.0.0.1:{MANAGEMENT_PORT}",
            f"the broker already running on 127.0.0.1:{AMQP_PORT}",
        )
    if port_open(AMQP_PORT):
        raise BrokerUnavailable(
            f"127.0.0.1:{AMQP_PORT} is taken by something that does not speak AMQP: free the port, "
            "or set AMQP_URL to a RabbitMQ broker"
        )
    if not rabbitmq_installed() and os.geteuid() == 0:
        say("rabbitmq-server is missing: installing it with apt-get")
        try:
            install_rabbitmq()
        except subprocess.CalledProcessError as exc:
            say(f"apt-get install rabbitmq-server failed ({exc}); looking for another broker")
    if rabbitmq_installed():
        return _local_node(var_dir, cleanups)
    if docker_available():
        return _container(cleanups)
    raise BrokerUnavailable(
        "no RabbitMQ broker. Do one of: install it (`sudo apt-get install -y rabbitmq-server`, then "
        "`make run` again); set AMQP_URL=amqp://user:pass@host:5672/ to use a running broker; or start a "
        "Docker engine (a container is then started through testcontainers)."
    )


def service_ports() -> dict[str, int]:
    return {svc: int(os.environ.get(f"{svc.upper()}_HTTP_PORT", DEFAULT_PORTS[svc])) for svc in SERVICES}


def replicas() -> int:
    value = os.environ.get("OMS_REPLICAS", "1")
    if not value.isdigit() or int(value) < 1:
        raise StartupError(f"OMS_REPLICAS={value!r}: give the number of processes per service (1, 2, ...)")
    return int(value)


def database() -> str:
    value = os.environ.get("OMS_DATABASE", "sqlite").lower()
    if value not in ("sqlite", "postgres"):
        raise StartupError(f"OMS_DATABASE={value!r}: use 'sqlite' (the default) or 'postgres'")
    return value


def postgres_home(var_dir: Path) -> Path:
    """``.var/postgres``; as root, when the project is out of the ``postgres`` user's reach (under
    root's home, say), a folder of this project's own under /var/lib/oms instead."""
    var_dir.mkdir(parents=True, exist_ok=True)
    user = run_as()
    if reachable(var_dir, user):
        return var_dir / "postgres"
    home = Path("/var/lib/oms") / hashlib.sha256(str(var_dir).encode()).hexdigest()[:12] / "postgres"
    say(f"the {user} user that PostgreSQL runs as cannot reach {var_dir}: its data goes to {home}")
    return home


def start_postgres(var_dir: Path, cleanups: list[Callable[[], None]]) -> PostgresServer:
    """PostgreSQL of this run's own, with a database per service."""
    if bindir() is None:
        if os.geteuid() != 0:
            raise PostgresUnavailable(
                "PostgreSQL is not installed: run 'sudo apt-get install -y postgresql', "
                "or leave OMS_DATABASE unset (SQLite)"
            )
        say("postgresql is missing: installing it with apt-get")
        install_postgresql()
    server = PostgresServer(
        postgres_home(var_dir),
        port=int(os.environ.get("OMS_POSTGRES_PORT", "0")) or _port_or_free(POSTGRES_PORT),
    )
    cleanups.append(server.stop)
    say(f"starting PostgreSQL (data in {_shown(server.home)}, log {server.log_file})")
    server.start()
    server.ensure_databases(list(SERVICES))
    return server


def check_ports_free(ports: dict[str, int]) -> None:
    """``ports``: process name (``orders``, ``orders-1``, ...) → port."""
    taken = [
        f"{port} ({name}; set {split_name(name)[0].upper()}_HTTP_PORT)"
        for name, port in ports.items()
        if port_open(port)
    ]
    if taken:
        raise StartupError(f"ports already in use: {', '.join(taken)}. Is another `make run` running?")


def _shown(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return f"{path.relative_to(Path.cwd())}/"
    return f"{path}/"


def banner(system: System, broker: Broker, postgres: PostgresServer | None = None) -> str:
    def urls(svc: str, path: str = "") -> str:
        return "  ".join(f"{system.url(name)}{path}" for name in system.replicas_of(svc))

    rows = [
        ("orders API", urls("orders", "/v1/orders")),
        ("ops console", f"{system.url('orders')}/ops"),
        *((svc, urls(svc)) for svc in system.services if svc != "orders"),
        *(
            [
                (
                    "PostgreSQL",
                    f"{postgres.url.replace('+asyncpg', '').rsplit('/', 1)[0]}/<service>  "
                    f"(data {_shown(postgres.home)})",
                )
            ]
            if postgres
            else []
        ),
        (
            "RabbitMQ",
            broker.url + (f"  (management {broker.management_url})" if broker.management_url else ""),
        ),
        ("e-mails", f"{_shown(system.mail_dir)}  (SMTP sink on 127.0.0.1:{system.smtp_port})"),
        *((f"{provider} stand-in", system.standin_url(provider)) for provider in system.standins),
        ("logs", _shown(system.logs_dir)),
    ]
    return "OMS ready\n" + "\n".join(f"  {name:<17} {value}" for name, value in rows)


def main() -> int:
    var_dir = Path(os.environ.get("OMS_VAR_DIR", ".var")).resolve()
    cleanups: list[Callable[[], None]] = []
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if stopping.is_set():
            return  # already on the way out: let the clean-up finish
        stopping.set()
        raise Stopped(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    code = 0
    try:
        n, db = replicas(), database()
        broker = get_broker(var_dir, cleanups)
        say(f"broker: {broker.what}")
        ports = service_ports()
        check_ports_free(
            {replica_name(svc, r): port + 100 * r for svc, port in ports.items() for r in range(n)}
        )
        postgres = start_postgres(var_dir, cleanups) if db == "postgres" else None
        defaults = dict(DEFAULTS)
        if postgres is not None:  # soft: a service's own <SERVICE>_DATABASE_URL wins
            defaults.update({f"{svc.upper()}_DATABASE_URL": postgres.database_url(svc) for svc in SERVICES})
        smtp_port = int(os.environ.get("OMS_SMTP_PORT", "0")) or _port_or_free(SMTP_PORT)
        standin_ports = {name: _port_or_free(port) for name, port in STANDINS.items()}
        system = System(
            var_dir,
            broker.url,
            ports=ports,
            smtp_port=smtp_port,
            standin_ports=standin_ports,
            card_processor=os.environ.get("OMS_CARD_PROCESSOR", "stripe"),
            defaults=defaults,
            replicas=n,
        )
        cleanups.append(system.stop)
        say("migrating the databases")
        system.migrate()
        say("loading demo data")
        system.seed()
        system.start_smtp()
        system.start_standins()
        each = f" ({n} processes each)" if n > 1 else ""
        say(f"starting {', '.join(system.services)}{each} (logs in {_shown(system.logs_dir)})")
        system.start_all()
        system.supervise()
        system.wait_ready(timeout=180)
        print(banner(system, broker, postgres), flush=True)
        say("running; Ctrl-C to stop")
        while True:
            stopping.wait()  # only a signal ends this (its handler raises Stopped)
    except Stopped as stop:
        say(f"{stop.args[0]}: stopping")
    except (BrokerUnavailable, PostgresUnavailable, StartupError) as exc:
        print(f"[oms] cannot start: {exc}", file=sys.stderr, flush=True)
        code = 1
    finally:
        stopping.set()
        for cleanup in reversed(cleanups):
            try:
                cleanup()
            except Exception as exc:  # stop what else we can
                print(f"[oms] while stopping: {exc!r}", file=sys.stderr, flush=True)
        say("stopped")
    return code


if __name__ == "__main__":
    sys.exit(main())
