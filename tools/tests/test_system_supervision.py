"""System with stand-in processes (tools/tests/dummy_service.py): start, ready, kill, restart, stop,
and the supervision that ``make run`` relies on. No broker, no real services."""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from omstools.system import StartupError, System

DUMMY = Path(__file__).with_name("dummy_service.py")


def dummy_command(svc: str, command: str) -> list[str]:
    return [sys.executable, str(DUMMY), command, svc]


def wait_for(condition: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


class Lines:
    """What the system reports, collected thread-safely."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, line: str) -> None:
        with self._lock:
            self._lines.append(line)

    def matching(self, pattern: str) -> list[str]:
        with self._lock:
            return [line for line in self._lines if re.search(pattern, line)]


@pytest.fixture
def lines() -> Lines:
    return Lines()


@pytest.fixture
def make_system(tmp_path: Path, lines: Lines) -> Iterator[Callable[..., System]]:
    made: list[System] = []

    def make(services: tuple[str, ...] = ("alpha", "beta"), **kwargs) -> System:
        system = System.on_free_ports(
            tmp_path / "var",
            "amqp://guest:guest@127.0.0.1:1/",
            services=services,
            command=dummy_command,
            report=lines,
            **kwargs,
        )
        made.append(system)
        return system

    yield make
    for system in made:
        system.stop(grace=5)


def test_services_start_become_ready_and_log_to_their_own_files(make_system):
    system = make_system()
    system.start_all()
    system.wait_ready(timeout=20)
    for svc in system.services:
        assert httpx.get(f"{system.url(svc)}/readyz").status_code == 200
        assert "serving on" in system.log_path(svc).read_text()
        assert os.getpgid(system.pid(svc)) == system.pid(svc), "each in its own process group"


def test_env_for_names_the_broker_ports_var_dir_and_smtp_and_overrides_win(make_system, monkeypatch):
    monkeypatch.setenv("OMS_ENV", "test")
    monkeypatch.setenv("ALPHA_HTTP_PORT", "1")  # the system's own port wins over the caller's
    system = make_system(
        defaults={"OMS_ENV": "local", "SOME_DEFAULT": "d"},
        env={"LOG_JSON": "true"},
        service_env={"alpha": {"LOG_JSON": "false"}},
    )
    env = system.env_for("alpha")
    assert env["AMQP_URL"] == system.amqp_url
    assert env["ALPHA_HTTP_PORT"] == str(system.ports["alpha"]) and env["ALPHA_HTTP_HOST"] == "127.0.0.1"
    assert env["OMS_VAR_DIR"] == str(system.var_dir)
    assert env["NOTIFICATIONS_SMTP_PORT"] == str(system.smtp_port)
    assert env["OMS_ENV"] == "test", "the caller's environment beats a soft default"
    assert env["SOME_DEFAULT"] == "d"
    assert env["LOG_JSON"] == "false" and system.env_for("beta")["LOG_JSON"] == "true"


def test_migrate_runs_every_service_and_names_the_one_that_failed(make_system, tmp_path):
    system = make_system()
    system.migrate(timeout=20)
    assert (system.var_dir / "alpha.migrate.done").exists() and (
        system.var_dir / "beta.migrate.done"
    ).exists()

    system.service_env["beta"] = {"DUMMY_MODE": "fail-migrate"}
    with pytest.raises(StartupError, match=r"(?s)beta migrate exited 2.*migrate failed on purpose"):
        system.migrate(timeout=20)


def test_a_service_that_exits_before_it_is_ready_fails_the_wait_with_its_log(make_system):
    system = make_system(services=("alpha",), service_env={"alpha": {"DUMMY_MODE": "die"}})
    system.start_all()
    with pytest.raises(StartupError, match=r"(?s)alpha exited with code 3.*dying on purpose"):
        system.wait_ready(timeout=20)


def test_unsupervised_a_killed_service_stays_down_until_started(make_system):
    system = make_system(services=("alpha",))
    system.start_all()
    system.wait_ready(timeout=20)
    pid = system.pid("alpha")
    system.kill("alpha")
    assert not alive(pid) and not system.running("alpha") and not system.ready("alpha")
    new_pid = system.start("alpha")
    system.wait_ready(["alpha"], timeout=20)
    assert new_pid != pid


def test_restart_applies_new_environment(make_system):
    system = make_system(services=("alpha",))
    system.start_all()
    system.wait_ready(timeout=20)
    old = system.pid("alpha")
    system.restart("alpha", env={"DUMMY_GREETING": "hello"}, timeout=20)
    assert not alive(old)
    assert httpx.get(f"{system.url('alpha')}/healthz").text == f"hello {system.pid('alpha')}"


def test_a_supervised_service_that_dies_is_restarted_and_the_run_says_so(make_system, lines):
    system = make_system(services=("alpha", "beta"), backoff_initial=0.2)
    system.start_all()
    system.wait_ready(timeout=20)
    system.supervise()
    killed, untouched = system.pid("alpha"), system.pid("beta")

    system.kill("alpha")
    wait_for(lambda: system.running("alpha") and system.pid("alpha") != killed, what="alpha restarted")
    system.wait_ready(["alpha"], timeout=20)

    assert lines.matching(r"^alpha exited with code -9 after [\d.]+s; restarting in 0\.2s")
    assert lines.matching(r"^alpha restarted \(pid \d+, restart #1\)")
    assert system.restarts == {"alpha": 1}
    assert system.pid("beta") == untouched, "the others are left alone"


def test_the_backoff_doubles_while_a_service_keeps_dying_and_is_capped(make_system, lines):
    system = make_system(
        services=("alpha",),
        service_env={"alpha": {"DUMMY_MODE": "die"}},
        backoff_initial=0.05,
        backoff_max=0.2,
    )
    system.start_all()
    system.supervise()
    wait_for(lambda: len(lines.matching("restarting in")) >= 5, what="five restarts announced")
    system.stop_supervising()
    delays = [
        float(re.search(r"restarting in ([\d.]+)s", line).group(1))
        for line in lines.matching("restarting in")
    ]
    assert delays[:5] == [0.05, 0.1, 0.2, 0.2, 0.2]


def test_a_process_that_lived_long_enough_gets_the_short_backoff_again(make_system, lines):
    system = make_system(services=("alpha",), backoff_initial=0.05, backoff_max=1.0, stable_after=0.0)
    system.start_all()
    system.wait_ready(timeout=20)
    system.supervise()
    for n in (1, 2):
        pid = system.pid("alpha")
        system.kill("alpha")
        wait_for(lambda pid=pid: system.running("alpha") and system.pid("alpha") != pid, what=f"restart {n}")
    assert [line.split("restarting in ")[1].split("s")[0] for line in lines.matching("restarting in")] == [
        "0.05",
        "0.05",
    ]


def test_stop_ends_every_process_even_one_that_ignores_sigterm(make_system):
    system = make_system(services=("alpha", "beta"), service_env={"beta": {"DUMMY_MODE": "stubborn"}})
    system.start_all()
    system.wait_ready(timeout=20)
    system.supervise()
    pids = [system.pid("alpha"), system.pid("beta")]
    started = time.monotonic()
    system.stop(grace=1.0)
    assert time.monotonic() - started < 15
    assert not any(alive(pid) for pid in pids)
    assert not system.supervising and not system.running("alpha")


def test_the_smtp_sink_is_started_and_stopped_with_the_system(make_system):
    import smtplib

    system = make_system(services=())
    system.start_smtp(timeout=20)
    with smtplib.SMTP("127.0.0.1", system.smtp_port, timeout=10) as smtp:
        smtp.sendmail("oms@example.com", ["lin@example.com"], b"Subject: hi\r\n\r\nbody\r\n")
    wait_for(lambda: any(system.mail_dir.glob("*.eml")), what="the .eml file")
    pid = system._procs["smtp-sink"].popen.pid
    system.stop(grace=10)
    assert not alive(pid)
