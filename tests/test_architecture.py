"""The services share only the `events` contract (STYLE.md): checked by import-linter's contracts
in pyproject.toml, run here so that `make test` fails when a service imports another."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_no_service_imports_another_and_the_contract_imports_none():
    lint_imports = shutil.which("lint-imports")
    assert lint_imports, "import-linter is a dev dependency: run uv sync"
    result = subprocess.run([lint_imports], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken" in result.stdout
