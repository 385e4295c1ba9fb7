from pathlib import Path

from chassis.cli import main
from orders.config import Settings

main(
    service="orders",
    settings=Settings,
    app_factory="orders.app:create_app",
    migrations_dir=Path(__file__).resolve().parents[2] / "migrations",
)
