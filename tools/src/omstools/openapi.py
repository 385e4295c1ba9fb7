"""The OpenAPI documents of the HTTP APIs that gateways and ops call (orders, inventory, shipping),
committed under docs/openapi/ so that clients can be generated from them. The services do not
serve them (``/openapi.json`` and ``/docs`` are 404: chassis.web), so they are written from the
same FastAPI apps here and a test fails when they drift."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any

FOLDER = Path(__file__).resolve().parents[3] / "docs" / "openapi"
SERVICES = ("orders", "inventory", "shipping")


def build(service: str) -> dict[str, Any]:
    """The service's OpenAPI document, from its app (nothing is started: the lifespan is not run)."""
    return importlib.import_module(f"{service}.app").create_app().openapi()


def text(service: str) -> str:
    return json.dumps(build(service), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omstools.openapi")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if a document under docs/openapi/ is out of date"
    )
    args = parser.parse_args(argv)
    stale = []
    for service in SERVICES:
        path = FOLDER / f"{service}.json"
        current = path.read_text() if path.exists() else ""
        if current == text(service):
            continue
        if args.check:
            stale.append(str(path))
            continue
        FOLDER.mkdir(parents=True, exist_ok=True)
        path.write_text(text(service))
        print(f"wrote {path}")
    if stale:
        print(f"out of date: {', '.join(stale)}: run `make openapi`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
