"""The contract is what an outside subscriber installs: importing it loads no plumbing."""

import subprocess
import sys

PLUMBING = ("chassis", "sqlalchemy", "faststream", "fastapi", "aio_pika", "structlog", "opentelemetry")


def test_the_contract_imports_no_plumbing() -> None:
    code = (
        "import sys\n"
        "import events.envelope, events.names, events.types, events.topology\n"
        "import events.orders, events.inventory, events.payments, events.shipping, events.notifications\n"
        f"loaded = sorted({{m.split('.')[0] for m in sys.modules}} & set({PLUMBING!r}))\n"
        "print(','.join(loaded))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "", f"the contract loaded {out.stdout.strip()}"
