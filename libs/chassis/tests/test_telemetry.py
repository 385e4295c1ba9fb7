"""Tracing set-up: what is recorded depends on whether anything exports it; ids flow either way."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

_PROBE = """
import json
from chassis.telemetry import context_from, current_trace_id, current_traceparent, setup_tracing, tracer
setup_tracing("probe")
with tracer().start_as_current_span("root") as root:
    out = {"root_recording": root.is_recording(), "traceparent": current_traceparent(), "trace_id": current_trace_id()}
parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
with tracer().start_as_current_span("child", context=context_from(parent)) as child:
    out["sampled_parent_recording"] = child.is_recording()
print("PROBE " + json.dumps(out), flush=True)
"""


def _probe(**env: str) -> dict:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")} | env
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], env=environment, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    [line] = [line for line in done.stdout.splitlines() if line.startswith("PROBE ")]
    return json.loads(line.removeprefix("PROBE "))


def test_with_nothing_exporting_spans_are_not_recorded_but_ids_flow():
    out = _probe()
    assert out["root_recording"] is False
    version, trace_id, span_id, flags = out["traceparent"].split("-")
    assert version == "00" and len(trace_id) == 32 and len(span_id) == 16
    assert int(flags, 16) & 0x01 == 0  # not sampled: downstream records nothing either
    assert out["trace_id"] == trace_id  # what the logs carry
    assert out["sampled_parent_recording"] is True  # a caller that samples is respected


@pytest.mark.parametrize("env", [{"OTEL_TRACES_SAMPLER": "always_on"}, {"OTEL_TRACES_EXPORTER": "console"}])
def test_a_sampler_or_an_exporter_set_by_deployment_records_spans(env):
    assert _probe(**env)["root_recording"] is True
