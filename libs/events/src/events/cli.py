"""``python -m <service> serve|migrate|makemigration``: the same commands for every service."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from events.settings import ServiceSettings


def main(
    *,
    service: str,
    settings: Callable[[], ServiceSettings],
    app_factory: str,
    migrations_dir: Path,
    extra: dict[str, Callable[[ServiceSettings], None]] | None = None,
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

        uvicorn.run(
            app_factory,
            factory=True,
            host=s.http_host,
            port=s.http_port,
            log_level="warning",
            access_log=False,
            lifespan="on",
        )
    elif args.command == "migrate":
        from events.migrations import upgrade

        upgrade(migrations_dir, s.database_url)
    elif args.command == "makemigration":
        from events.migrations import revision

        revision(migrations_dir, s.database_url, args.message)
    else:
        extra[args.command](s)
