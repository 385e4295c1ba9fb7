from pathlib import Path

from chassis.cli import main
from shipping.config import Settings

main(
    service="shipping",
    settings=Settings,
    app_factory="shipping.app:create_app",
    migrations_dir=Path(__file__).resolve().parents[2] / "migrations",
)
