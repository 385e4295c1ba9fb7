"""``python -m <service> serve|migrate|makemigration``: the same commands for every service."""

from __future__ import annotations

import argparse
import gc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chassis.settings import ServiceSettings

# A collection of young objects after this many allocations instead of 700. Handling one message
# allocates thousands (ORM states, models, frames): at 700 the collector ran several times per
# message, and moved what was still in use into the older generations, which then filled up and
# were collected in turn.
GC_THRESHOLD = (50_000, 20, 20)


def tune_gc() -> None:
    """Fewer cyclic garbage collections in a serving process.

    What the imports built (modules, mappers, models, compiled caches) lives as long as the process:
    ``gc.freeze`` moves it out of the collector's way, so a full collection no longer walks it."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


def main(
    *,
    service: str,
    settings: Callable[[], ServiceSettings],
    app_factory: str,
    migrations_dir: Path,
    extra: dict[str, Callable[[Any], None]] | None = None,
    argv: list[str] | None = None,
) -> None:
    extra = extra or {}
    parser = argparse.ArgumentParser(prog=f"python -m {service}")
    parser.add_argument("command", choices=["serve", "migrate", "makemigration", *extra])
    parser.add_argument("-m", "--message", default="change", help="makemigration: the revision's message")
    args = parser.parse_args(argv)
    s = settings()

    if args.command == "serve":
        import uvicorn
        from uvicorn.importer import import_from_string

        factory = import_from_string(app_factory)
        tune_gc()
        uvicorn.run(
            factory,
            factory=True,
            host=s.http_host,
            port=s.http_port,
            log_level="warning",
            access_log=False,
            lifespan="on",
        )
    elif args.command == "migrate":
        from chassis.migrations import upgrade

        upgrade(migrations_dir, s.database_url)
    elif args.command == "makemigration":
        from chassis.migrations import revision

        revision(migrations_dir, s.database_url, args.message)
    else:
        extra[args.command](s)
