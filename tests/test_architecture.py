"""The services share only the `events` contract and the `chassis`, the contract loads no
plumbing, and inside each service the imports point down
its layers (STYLE.md): checked by import-linter's contracts in pyproject.toml, run here so that
`make test` fails when a service imports another or a module one above it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_no_service_imports_another_and_each_keeps_its_layers():
    lint_imports = shutil.which("lint-imports")
    assert lint_imports, "import-linter is a dev dependency: run uv sync"
    result = subprocess.run([lint_imports], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 9 kept, 0 broken" in result.stdout
    assert "The events contract depends on no service and on no plumbing KEPT" in result.stdout
    for service in ("orders", "inventory", "payments", "shipping", "notifications"):
        assert f"\n{service}: entry points" in result.stdout, service
