"""``python -m omstools.run`` (what ``make run`` does) from start to Ctrl-C, with stand-ins for the
five services (tools/tests/dummy_service.py, put first on PYTHONPATH) and ``AMQP_URL`` set, so no
broker is needed: migrate, seed, ``OMS ready`` and the URLs, a killed service started again and
announced, SIGTERM stopping everything with exit code 0."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from omstools.rabbit import free_port
from omstools.run import answers_amqp, banner, check_ports_free
from omstools.system import SERVICES, StartupError, System

DUMMY = Path(__file__).with_name("dummy_service.py")


def fake_services(root: Path) -> Path:
    """Packages named like the services whose ``__main__`` is the stand-in."""
    for svc in SERVICES:
        package = root / svc
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "__main__.py").write_text(
            "import runpy, sys\n"
            f"sys.argv = [sys.argv[0], sys.argv[1], {svc!r}]\n"
            f"runpy.run_path({str(DUMMY)!r}, run_name='__main__')\n"
        )
    return root


class Output:
    """The run's stdout, line by line, read in a thread so waiting for a line has a deadline."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, text: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        for line in self.lines:
            if text in line:
                return line
        while True:
            try:
                line = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            else:
                if line is not None:
                    self.lines.append(line)
                    if text in line:
                        return line
                    continue
            raise AssertionError(f"no line with {text!r} within {timeout}s; got:\n" + "\n".join(self.lines))


def pid_of(url: str, timeout: float = 30.0) -> int:
    """The PID the stand-in at ``url`` reports, once it answers."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return int(httpx.get(f"{url}/healthz", timeout=5).text.split()[-1])
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().split()[2] == "Z"


def test_make_run_starts_everything_restarts_a_dead_service_and_stops_on_sigterm(tmp_path):
    ports = {svc: free_port() for svc in SERVICES}
    env = {
        **os.environ,
        "PYTHONPATH": str(fake_services(tmp_path / "fakes")),
        "AMQP_URL": "amqp://guest:guest@127.0.0.1:1/",
        "OMS_VAR_DIR": str(tmp_path / "var"),
        "OMS_SMTP_PORT": str(free_port()),
        **{f"{svc.upper()}_HTTP_PORT": str(port) for svc, port in ports.items()},
    }
    run = subprocess.Popen(
        [sys.executable, "-m", "omstools.run"],
        env=env,
        cwd=tmp_path,
        text=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    out = Output(run.stdout)
    try:
        out.wait_for("OMS ready")
        out.wait_for("e-mails")
        assert f"http://127.0.0.1:{ports['orders']}/v1/orders" in "\n".join(out.lines)
        assert {p.name for p in (tmp_path / "var").glob("*.done")} == {
            *(f"{svc}.migrate.done" for svc in SERVICES),
            "inventory.seed.done",
        }
        pids = {svc: pid_of(f"http://127.0.0.1:{port}") for svc, port in ports.items()}

        os.kill(pids["payments"], signal.SIGKILL)
        out.wait_for("payments exited with code -9")
        assert "restarting in 1s" in out.wait_for("payments exited")
        out.wait_for("payments restarted", timeout=30)
        new_pid = pid_of(f"http://127.0.0.1:{ports['payments']}")
        assert new_pid != pids["payments"]

        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=60) == 0
        out.wait_for("[oms] stopped")
    finally:
        if run.poll() is None:  # a failed assertion: still let it stop what it started
            run.send_signal(signal.SIGTERM)
            try:
                run.wait(timeout=60)
            except subprocess.TimeoutExpired:
                run.kill()
                run.wait()
    assert all(gone(pid) for pid in [*pids.values(), new_pid])


def test_a_port_in_use_is_named_before_anything_starts():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(StartupError, match=f"{port} \\(orders; set ORDERS_HTTP_PORT\\)"):
            check_ports_free({"orders": port, "inventory": free_port()})


def test_only_a_broker_counts_as_answering_amqp():
    with socket.socket() as s:  # listens, never answers
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert not answers_amqp(s.getsockname()[1], timeout=0.5)
    assert not answers_amqp(free_port(), timeout=0.5)


def test_the_banner_lists_every_url(tmp_path):
    from omstools.run import Broker

    system = System(tmp_path / "var", "amqp://guest:guest@127.0.0.1:5672/")
    text = banner(system, Broker("amqp://guest:guest@127.0.0.1:5672/", "http://127.0.0.1:15672", "test"))
    assert text.splitlines()[0] == "OMS ready"
    for needle in (
        "http://127.0.0.1:8000/v1/orders",
        "http://127.0.0.1:8000/ops",
        "http://127.0.0.1:8004",
        "management http://127.0.0.1:15672",
        "mail",
    ):
        assert needle in text


def test_with_replicas_every_process_has_its_port_and_the_banner_lists_them(tmp_path):
    from omstools.postgres import PostgresServer
    from omstools.run import Broker

    system = System(tmp_path / "var", "amqp://guest:guest@127.0.0.1:5672/", replicas=2)
    assert system.processes[:2] == ["orders", "orders-1"] and len(system.processes) == 10
    assert [system.port(name) for name in system.replicas_of("payments")] == [8002, 8102]
    assert system.env_for("shipping-1")["SHIPPING_HTTP_PORT"] == "8103"
    system.service_env = {"shipping": {"SHIPPING_X": "all"}, "shipping-1": {"SHIPPING_Y": "one"}}
    assert (
        system.env_for("shipping-1")["SHIPPING_X"] == "all"
        and system.env_for("shipping-1")["SHIPPING_Y"] == "one"
    )
    assert "SHIPPING_Y" not in system.env_for("shipping")
    postgres = PostgresServer(tmp_path / "pg", port=5433)  # not started: the banner only reads its URL
    text = banner(system, Broker("amqp://guest:guest@127.0.0.1:5672/", None, "test"), postgres)
    for needle in (
        "http://127.0.0.1:8000/v1/orders  http://127.0.0.1:8100/v1/orders",
        "http://127.0.0.1:8004  http://127.0.0.1:8104",
        "postgresql://oms@127.0.0.1:5433/<service>",
    ):
        assert needle in text


def test_a_replica_port_in_use_is_named(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(StartupError, match=f"{port} \\(orders-1; set ORDERS_HTTP_PORT\\)"):
            check_ports_free({"orders": free_port(), "orders-1": port})
