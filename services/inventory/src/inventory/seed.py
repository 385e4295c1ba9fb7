"""Demo data for local runs (``python -m inventory seed``): idempotent, never resets counts."""

from __future__ import annotations

import asyncio

from chassis.db import InsertIfAbsent, make_engine, make_sessionmaker, table
from inventory.config import Settings
from inventory.db import Stock, Warehouse

WAREHOUSES = [
    ("SH", "Shanghai", "CN", 31.23, 121.47),
    ("BJ", "Beijing", "CN", 39.90, 116.40),
    ("FRA", "Frankfurt", "DE", 50.11, 8.68),
    ("NYC", "New York", "US", 40.71, -74.00),
]
STOCK = {
    **{
        sku: {"SH": 500, "BJ": 500, "FRA": 200, "NYC": 200}
        for sku in ("SKU-RED-MUG", "SKU-BLUE-MUG", "SKU-TEA-POT", "SKU-GREEN-TEA", "SKU-CHOPSTICKS")
    },
    "SKU-LIMITED": {"SH": 3},
}


_new_warehouse, _new_stock = InsertIfAbsent(table(Warehouse)), InsertIfAbsent(table(Stock))


async def load_demo_data(settings: Settings) -> None:
    """Warehouses and stock rows that do not exist yet; existing counts are left as they are."""
    engine = make_engine(settings.database_url)
    try:
        sessions = make_sessionmaker(engine)
        async with sessions.begin() as session:
            for code, name, country, lat, lon in WAREHOUSES:
                await _new_warehouse(
                    session,
                    {"code": code, "name": name, "country": country, "latitude": lat, "longitude": lon},
                )
            for sku, levels in STOCK.items():
                for warehouse, quantity in levels.items():
                    await _new_stock(
                        session,
                        {
                            "warehouse": warehouse,
                            "sku": sku,
                            "on_hand": quantity,
                            "reserved": 0,
                            "low_stock_threshold": min(settings.default_low_stock_threshold, quantity - 1),
                            "reorder_quantity": settings.default_reorder_quantity,
                            "low_alerted": False,
                        },
                    )
    finally:
        await engine.dispose()


def seed(settings: Settings) -> None:
    """``python -m inventory seed``."""
    asyncio.run(load_demo_data(settings))
