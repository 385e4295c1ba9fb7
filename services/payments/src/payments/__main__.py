from pathlib import Path

from chassis.cli import main
from payments.config import Settings

main(
    service="payments",
    settings=Settings,
    app_factory="payments.app:create_app",
    migrations_dir=Path(__file__).resolve().parents[2] / "migrations",
)
