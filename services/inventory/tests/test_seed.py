"""``python -m inventory migrate`` then ``seed``, as `make run` calls them: demo data once, never reset."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys


def run(command: str, database: str) -> None:
    env = {**os.environ, "INVENTORY_DATABASE_URL": f"sqlite+aiosqlite:///{database}"}
    result = subprocess.run(
        [sys.executable, "-m", "inventory", command], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def levels(database: str) -> dict[tuple[str, str], tuple[int, int]]:
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT warehouse, sku, on_hand, low_stock_threshold FROM stock").fetchall()
    return {(w, s): (on_hand, threshold) for w, s, on_hand, threshold in rows}


def test_seed_loads_the_demo_data_once_and_never_resets_counts(tmp_path):
    database = str(tmp_path / "inventory.db")
    run("migrate", database)
    run("seed", database)
    seeded = levels(database)
    assert seeded[("SH", "SKU-LIMITED")] == (3, 2)
    assert [k for k in seeded if k[1] == "SKU-LIMITED"] == [("SH", "SKU-LIMITED")]
    for sku in ("SKU-RED-MUG", "SKU-BLUE-MUG", "SKU-TEA-POT", "SKU-GREEN-TEA", "SKU-CHOPSTICKS"):
        assert {w for w, s in seeded if s == sku} == {"SH", "BJ", "FRA", "NYC"}
        assert all(on_hand >= 200 for (_, s), (on_hand, _) in seeded.items() if s == sku)
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT code, country FROM warehouse ORDER BY code").fetchall() == [
            ("BJ", "CN"),
            ("FRA", "DE"),
            ("NYC", "US"),
            ("SH", "CN"),
        ]
        db.execute("UPDATE stock SET on_hand = 1 WHERE sku = 'SKU-LIMITED'")

    run("seed", database)
    again = levels(database)
    assert again[("SH", "SKU-LIMITED")] == (1, 2)
    assert len(again) == len(seeded)
