"""The ops dashboard, its JSON summary and the sales report (SQLite; broker and inventory absent)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from orders_support import ADMIN, BODY, GATEWAY, OPS, body
from sqlalchemy import update

from events.inventory import StockReservationFailed, StockReserved
from events.payments import PaymentCaptured
from events.shipping import ShipmentCreated, ShipmentUpdated
from events.types import Allocation
from orders import service
from orders.db import OrderHistory


async def test_summary_counts_orders_and_says_what_it_cannot_reach(client, sessions, settings):
    a = (await client.post("/v1/orders", json=BODY, headers={**GATEWAY, "Idempotency-Key": "a"})).json()["id"]
    await client.post("/v1/orders", json=BODY, headers={**GATEWAY, "Idempotency-Key": "b"})
    await service.apply(sessions, a, StockReservationFailed(order_id=a), actor="oms/test", settings=settings)
    s = (await client.get("/v1/ops/summary", headers=OPS)).json()
    assert s["orders_by_status"] == {"cancelled": 1, "submitted": 1}
    assert s["throughput_last_5_min"]["placed"] == 2 and s["throughput_last_5_min"]["cancelled"] == 1
    assert s["low_stock"] is None and s["unrouted_events"] is None and s["dead_letters"]["parked"] == 0
    assert s["payment_mismatches"] is None  # payments is not there: said, not hidden
    assert (await client.get("/v1/ops/summary", headers=GATEWAY)).status_code == 403


async def test_the_dashboard_takes_no_key_in_the_link(client):
    """A key in a URL stays in browser histories and proxy logs: /ops shows the sign-in form."""
    for request in ({"params": {"key": "dev-ops-key"}}, {"headers": OPS}, {}):
        page = await client.get("/ops", **request)
        assert (
            page.status_code == 200 and 'name="api_key"' in page.text and "Orders by status" not in page.text
        )


async def test_sales_report(client, sessions, settings):
    two_mugs = (
        await client.post("/v1/orders", json=BODY, headers={**GATEWAY, "Idempotency-Key": "a"})
    ).json()["id"]
    tea = body(items=[{"sku": "SKU-TEA", "quantity": 1, "unit_price": "5.00"}])
    await client.post("/v1/orders", json=tea, headers={**GATEWAY, "Idempotency-Key": "b"})
    reserved = StockReserved(
        order_id=two_mugs, allocations=[Allocation(warehouse="SH", sku="SKU-RED-MUG", quantity=2)]
    )
    await service.apply(sessions, two_mugs, reserved, actor="oms/test", settings=settings)
    captured = PaymentCaptured(
        order_id=two_mugs, payment_id="p", amount=Decimal("79.80"), currency="CNY", method="card"
    )
    await service.apply(sessions, two_mugs, captured, actor="oms/test", settings=settings)
    report = (await client.get("/v1/reports/sales", headers=OPS)).json()
    assert report["orders"] == 2
    assert report["captured"] == {"CNY": "79.80"} and report["revenue"] == {"CNY": "79.80"}
    assert report["best_sellers"][0] == {"sku": "SKU-RED-MUG", "quantity": 2}
    assert report["worst_sellers"][0] == {"sku": "SKU-TEA", "quantity": 1}
    assert set(report["average_seconds_in_status"]) == {"submitted", "confirmed"}


async def test_the_sales_report_times_each_status_until_the_next(client, sessions, settings):
    paid = (await client.post("/v1/orders", json=BODY, headers={**GATEWAY, "Idempotency-Key": "a"})).json()[
        "id"
    ]
    short = (await client.post("/v1/orders", json=BODY, headers={**GATEWAY, "Idempotency-Key": "b"})).json()[
        "id"
    ]
    reserved = StockReserved(
        order_id=paid, allocations=[Allocation(warehouse="SH", sku="SKU-RED-MUG", quantity=2)]
    )
    await service.apply(sessions, paid, reserved, actor="oms/test", settings=settings)
    captured = PaymentCaptured(
        order_id=paid, payment_id="p", amount=Decimal("79.80"), currency="CNY", method="card"
    )
    await service.apply(sessions, paid, captured, actor="oms/test", settings=settings)
    await service.apply(
        sessions, short, StockReservationFailed(order_id=short), actor="oms/test", settings=settings
    )
    t0 = datetime(2026, 11, 30, 12, tzinfo=UTC)
    after = {
        (paid, "submitted"): 0,
        (paid, "confirmed"): 10,
        (paid, "paid"): 40,
        (short, "submitted"): 0,
        (short, "cancelled"): 4,
    }
    async with sessions.begin() as session:  # the history as if it had taken these seconds
        for (order_id, status), seconds in after.items():
            await session.execute(
                update(OrderHistory)
                .where(OrderHistory.order_id == order_id, OrderHistory.status == status)
                .values(at=t0 + timedelta(seconds=seconds))
            )
    report = (await client.get("/v1/reports/sales", headers=OPS)).json()
    # submitted lasted 10 s and 4 s; confirmed 30 s; the last status of each order is still going on
    assert report["average_seconds_in_status"] == {"confirmed": 30.0, "submitted": 7.0}
    assert report["orders_by_status"] == {"cancelled": 1, "paid": 1} and report["orders"] == 2
    assert report["best_sellers"] == [
        {"sku": "SKU-RED-MUG", "quantity": 2}
    ]  # the cancelled order sold nothing
    later = {"from": (datetime.now(UTC) + timedelta(hours=1)).isoformat()}
    assert (await client.get("/v1/reports/sales", params=later, headers=OPS)).json()["orders"] == 0


async def test_an_order_marked_for_attention_is_resolved_by_an_admin_and_leaves_the_dashboard(
    client, sessions, settings
):
    order_id = (
        await client.post("/v1/orders", json=BODY, headers={**GATEWAY, "Idempotency-Key": "a"})
    ).json()["id"]
    for reply in (
        StockReserved(
            order_id=order_id, allocations=[Allocation(warehouse="SH", sku="SKU-RED-MUG", quantity=2)]
        ),
        PaymentCaptured(
            order_id=order_id, payment_id="pay-1", amount=Decimal("79.80"), currency="CNY", method="card"
        ),
        ShipmentCreated(
            order_id=order_id,
            shipment_id="shp-1",
            carrier="sf",
            tracking_number="T1",
            warehouse="SH",
            estimated_delivery=datetime.now(UTC).date(),
        ),
    ):
        await service.apply(sessions, order_id, reply, actor="oms/test", settings=settings)
    assert (await client.post(f"/v1/orders/{order_id}/cancel", json={}, headers=GATEWAY)).status_code == 202
    # the carrier took the parcel before the cancel reached it: ops must get it back
    await service.apply(
        sessions,
        order_id,
        ShipmentUpdated(
            order_id=order_id,
            shipment_id="shp-1",
            carrier="sf",
            tracking_number="T1",
            status="picked_up",
            at=datetime.now(UTC),
        ),
        actor="oms/test",
        settings=settings,
    )
    summary = (await client.get("/v1/ops/summary", headers=OPS)).json()
    assert [o["id"] for o in summary["needs_attention"]] == [order_id]

    url = f"/v1/orders/{order_id}/attention/resolve"
    assert (await client.post(url, headers=GATEWAY)).status_code == 403
    resolved = await client.post(url, headers=ADMIN)
    assert resolved.status_code == 200 and resolved.json()["attention"] is None
    assert resolved.json()["status"] == "cancelled"  # the order itself is as it was
    assert (await client.get("/v1/ops/summary", headers=OPS)).json()["needs_attention"] == []
    again = await client.post(url, headers=ADMIN)
    assert again.status_code == 409 and "waits for a person" in again.json()["detail"]
    assert (await client.post("/v1/orders/ord_nope/attention/resolve", headers=ADMIN)).status_code == 404
