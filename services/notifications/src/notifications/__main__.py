from pathlib import Path

from chassis.cli import main
from notifications.config import Settings

main(
    service="notifications",
    settings=Settings,
    app_factory="notifications.app:create_app",
    migrations_dir=Path(__file__).resolve().parents[2] / "migrations",
)
