"""``make bench BENCH_ARGS=--quick``: the benchmark runs for real, a few seconds of each phase, against
the five services it starts on a virtual host of its own on the suite's broker, and writes the
JSON of CONTRACT §8 and the plot. No figure is judged here (timing belongs in the benchmark); only
that every figure is there and comes from orders that really went through."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

LATENCY_KEYS = {"p50", "p95", "p99", "max"}
PHASE_KEYS = {"offered_per_s", "duration_s", "placed", "paid_per_s", "shipped_per_s", "latency_ms", "errors"}


def test_quick_bench_writes_the_contract_json_and_a_plot(rabbit, amqp_url, tmp_path: Path):
    if rabbit.node is None:
        pytest.skip("the broker comes from AMQP_URL: the bench's services need a virtual host of their own")
    out = tmp_path / "results"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "omstools.bench",
            "--quick",
            "--start",
            "--amqp-url",
            amqp_url,
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    [json_path] = list(out.glob("*.json"))
    assert json_path.with_suffix(".png").stat().st_size > 10_000
    data = json.loads(json_path.read_text())
    assert {"started_at", "machine", "ceiling", "messages_per_order", "phases", "efficiency"} <= data.keys()
    assert {"cpus", "python", "broker"} <= data["machine"].keys()
    assert data["machine"]["broker"].startswith("RabbitMQ")
    assert data["ceiling"]["broker_msgs_per_s"] > 0
    assert data["ceiling"]["cpu_ms_per_msg"]["rabbitmq"] > 0, "what a message costs the broker alone"
    # reserve, reserved, capture, captured and the status events at least
    assert data["messages_per_order"] >= 5
    assert set(data["phases"]) == {"fixed", "saturation"}
    for name, phase in data["phases"].items():
        assert PHASE_KEYS <= phase.keys(), name
        assert phase["placed"] > 0, name
        assert phase["paid_per_s"] > 0, name
        assert set(phase["latency_ms"]) == {"paid", "shipped"}
        for kind in ("paid", "shipped"):
            latency = phase["latency_ms"][kind]
            assert set(latency) == LATENCY_KEYS
            assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"], (
                name,
                kind,
                latency,
            )
        assert phase["errors"] == {}, (name, phase["errors"])
    saturation = data["phases"]["saturation"]
    assert list(data["phases"]) == ["saturation", "fixed"]  # saturation first, then half its rate
    assert data["phases"]["fixed"]["offered_per_s"] == pytest.approx(max(0.5, saturation["paid_per_s"] / 2))
    cpu = data["cpu_ms_per_order"]
    assert {"total", "by_process"} <= cpu.keys()
    assert {"orders", "inventory", "payments", "shipping", "notifications", "rabbitmq"} <= cpu[
        "by_process"
    ].keys()
    assert all(ms > 0 for ms in cpu["by_process"].values())
    assert cpu["total"] == pytest.approx(sum(cpu["by_process"].values()), abs=0.5)
    assert cpu["total"] == pytest.approx(saturation["cpu_s_per_order_total"] * 1000, abs=0.1)
    expected = saturation["paid_per_s"] * data["messages_per_order"] / data["ceiling"]["broker_msgs_per_s"]
    assert data["efficiency"] == pytest.approx(expected, rel=0.01, abs=0.001)
    assert "OMS benchmark" in result.stdout and "efficiency" in result.stdout
