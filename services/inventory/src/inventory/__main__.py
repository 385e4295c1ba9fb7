from pathlib import Path

from chassis.cli import main
from inventory.config import Settings
from inventory.seed import seed

main(
    service="inventory",
    settings=Settings,
    app_factory="inventory.app:create_app",
    migrations_dir=Path(__file__).resolve().parents[2] / "migrations",
    extra={"seed": seed},
)
