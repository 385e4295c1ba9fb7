"""The consistency audit on made-up snapshots: each breach it must see, and a clean system."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from omstools.verify import audit

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
STUCK = timedelta(minutes=2)


def order(order_id: str, status: str, *, qty: int = 2, total: str = "20.00", age: float = 1.0) -> dict:
    return {"id": order_id, "status": status, "total": total, "items": [{"sku": "A", "quantity": qty}],
            "updated_at": (NOW - timedelta(seconds=age)).isoformat()}


def paid(order_id: str, amount: str = "20.00", refunded: str = "0.00", status: str = "captured") -> dict:
    return {"order_id": order_id, "amount": amount, "refunded_amount": refunded, "status": status}


def reserved(order_id: str, qty: int = 2) -> dict:
    return {"order_id": order_id, "sku": "A", "quantity": qty}


def check(orders=(), reservations=(), payments=(), shipments=()):
    return audit({"orders": list(orders), "reservations": list(reservations), "payments": list(payments),
                  "shipments": list(shipments)}, now=NOW, stuck_after=STUCK)


def test_a_consistent_system_passes():
    report = check(
        orders=[order("d", "delivered"), order("c", "cancelled"), order("p", "picking"), order("r", "returned")],
        reservations=[reserved("p")],
        payments=[paid("d"), paid("c", refunded="20.00", status="refunded"), paid("p"), paid("r", refunded="10.00")],
        shipments=[{"order_id": "d"}, {"order_id": "p"}, {"order_id": "r"}],
    )
    assert report.ok, report.breaches
    assert report.by_status["delivered"] == 1


def test_each_breach_is_seen():
    report = check(
        orders=[order("stuck", "confirmed", age=600), order("kept", "cancelled"), order("held", "cancelled"),
                order("short", "picking"), order("twice", "delivered"), order("unpaid", "delivered")],
        reservations=[reserved("held"), reserved("short", 1), reserved("ghost")],
        payments=[paid("kept"), paid("short"), paid("twice"), paid("ghost")],
        shipments=[{"order_id": "twice"}, {"order_id": "twice"}],
    )
    text = "\n".join(report.breaches)
    for expected in ("stuck: stuck in confirmed", "kept: cancelled but kept 20.00", "held: cancelled still holds",
                     "short: picking but holds", "twice: more than one shipment", "unpaid: delivered but kept 0",
                     "stock reserved for unknown order ghost", "payment for unknown order ghost"):
        assert expected in text, (expected, text)
    assert not report.ok
