"""Each service's migrations build exactly the schema its models describe: a table, column or
index added to a model without its migration fails here, not in a deployment."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from chassis.db import messaging_metadata
from chassis.deadletters import deadletter_metadata
from chassis.migrations import upgrade

ROOT = Path(__file__).resolve().parents[1]
SERVICES = {
    "orders": (deadletter_metadata,),
    "inventory": (),
    "payments": (),
    "shipping": (),
    "notifications": (),
}


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_the_migrations_build_the_schema_of_the_models(service, tmp_path):
    database = tmp_path / f"{service}.db"
    upgrade(ROOT / "services" / service / "migrations", f"sqlite+aiosqlite:///{database}")
    models = [importlib.import_module(f"{service}.db").Base.metadata, messaging_metadata, *SERVICES[service]]
    engine = create_engine(f"sqlite:///{database}")
    try:
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), models)
    finally:
        engine.dispose()
    assert differences == [], (
        f"{service}: the models and the migrations differ; run python -m {service} makemigration"
    )
