"""Commands, carrier reports and the simulated carrier, on SQLite; a cancel racing a carrier's
scan, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

from concurrency import Meeting
from sqlalchemy import select, update

from events.db import outbox_message
from events.envelope import Envelope, build
from events.orders import Address
from events.shipping import CancelShipment, CreateShipment, ExpectReturn
from events.types import LineItem
from events.types import ShipmentStatus as St
from shipping import carrier, parcels
from shipping.db import Shipment
from shipping.handlers import handle_cancel_shipment, handle_create_shipment, handle_expect_return

ADMIN = {"Authorization": "Bearer dev-admin-key"}
ADDRESS = Address(name="Lin Mei", line1="1 Century Ave", city="Shanghai", postal_code="200120", country="CN")


def msg(model, payload):
    return Envelope[model].model_validate(build(payload, service="orders", subject=payload.order_id))


def create(order_id: str, country: str = "CN"):
    return msg(CreateShipment, CreateShipment(order_id=order_id, warehouse="SH", address=ADDRESS.model_copy(update={"country": country}),
                                              items=[LineItem(sku="A", quantity=1)]))


async def events(sessions) -> list[dict]:
    async with sessions() as session:
        rows = (await session.execute(select(outbox_message).order_by(outbox_message.c.seq))).mappings().all()
    return [{"key": r["routing_key"], **json.loads(r["body"])} for r in rows]


async def test_one_parcel_per_order_whatever_is_resent(sessions, settings):
    first = create("o1")
    await handle_create_shipment(first, sessions, settings)
    await handle_create_shipment(first, sessions, settings)
    await handle_create_shipment(create("o1"), sessions, settings)
    created = await events(sessions)
    assert [e["key"] for e in created] == ["shipment.created", "shipment.created"]
    assert created[0]["data"]["tracking_number"] == created[1]["data"]["tracking_number"]
    assert created[0]["data"]["carrier"] == "sf-express"
    assert "Century" not in json.dumps(created), "the address never leaves the service"


async def test_no_carrier_for_antarctica(sessions, settings):
    await handle_create_shipment(create("o1", "AQ"), sessions, settings)
    [failed] = await events(sessions)
    assert (failed["key"], failed["data"]["reason"]) == ("shipment.failed", "no_carrier")


def cancel(order_id: str = "o1"):
    return msg(CancelShipment, CancelShipment(order_id=order_id, reason="customer_request"))


async def test_a_cancel_that_overtakes_the_create_books_no_parcel(sessions, settings):
    await handle_cancel_shipment(cancel(), sessions)
    await handle_create_shipment(create("o1"), sessions, settings)
    cancelled, failed = await events(sessions)
    assert cancelled["key"] == "shipment.cancelled" and cancelled["data"] == {"order_id": "o1", "shipment_id": None}
    assert (failed["key"], failed["data"]["reason"]) == ("shipment.failed", "cancelled")


async def _tracking(client, sessions, settings, order_id="o1") -> str:
    await handle_create_shipment(create(order_id), sessions, settings)
    return (await client.get(f"/v1/shipments/{order_id}", headers=ADMIN)).json()["tracking_number"]


async def test_carrier_reports_move_the_parcel_once(client, sessions, settings):
    tracking = await _tracking(client, sessions, settings)
    report = {"tracking_number": tracking, "status": "picked_up", "at": "2026-11-24T10:00:00Z", "location": "Shanghai"}
    assert (await client.post("/v1/carriers/sf-express/events", json=report, headers=ADMIN)).status_code == 202
    assert (await client.post("/v1/carriers/sf-express/events", json=report, headers=ADMIN)).status_code == 202
    updates = [e for e in await events(sessions) if e["key"] == "shipment.updated"]
    assert len(updates) == 1 and updates[0]["data"]["status"] == "picked_up"
    assert (await client.post("/v1/carriers/dhl/events", json=report, headers=ADMIN)).status_code == 404
    assert (await client.post("/v1/carriers/sf-express/events", json={**report, "tracking_number": "X"}, headers=ADMIN)).status_code == 404
    bad = await client.post("/v1/carriers/sf-express/events", json={**report, "status": "lost"}, headers=ADMIN)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "status"
    assert (await client.post("/v1/carriers/sf-express/events", json=report)).status_code == 401
    ops = {"Authorization": "Bearer dev-ops-key"}
    assert (await client.post("/v1/carriers/sf-express/events", json=report, headers=ops)).status_code == 403


async def test_a_cancelled_parcel_takes_no_more_reports(client, sessions, settings):
    tracking = await _tracking(client, sessions, settings)
    await handle_cancel_shipment(cancel(), sessions)
    [answer] = [e for e in await events(sessions) if e["key"] == "shipment.cancelled"]
    assert answer["data"]["shipment_id"].startswith("shp_")
    report = {"tracking_number": tracking, "status": "picked_up", "at": "2026-11-24T10:00:00Z"}
    assert (await client.post("/v1/carriers/sf-express/events", json=report, headers=ADMIN)).status_code == 409


async def test_a_cancel_after_the_carrier_took_the_parcel_is_answered_by_its_scan_alone(client, sessions, settings):
    tracking = await _tracking(client, sessions, settings)
    report = {"tracking_number": tracking, "status": "picked_up", "at": "2026-11-24T10:00:00Z"}
    assert (await client.post("/v1/carriers/sf-express/events", json=report, headers=ADMIN)).status_code == 202
    await handle_cancel_shipment(cancel(), sessions)
    assert [e["key"] for e in await events(sessions)] == ["shipment.created", "shipment.updated"]
    shipment = (await client.get("/v1/shipments/o1", headers=ADMIN)).json()
    assert (shipment["status"], shipment["cancelled"]) == ("picked_up", False)


async def test_an_expected_return_is_told_as_shipment_returned(client, sessions, settings):
    tracking = await _tracking(client, sessions, settings)
    for i, status in enumerate(("picked_up", "delivered", "returned")):
        if status == "returned":
            await handle_expect_return(msg(ExpectReturn, ExpectReturn(order_id="o1", items=[LineItem(sku="A", quantity=1)])), sessions)
        report = {"tracking_number": tracking, "status": status, "at": f"2026-11-24T1{i}:00:00Z"}
        assert (await client.post("/v1/carriers/sf-express/events", json=report, headers=ADMIN)).status_code == 202
    [returned] = [e for e in await events(sessions) if e["key"] == "shipment.returned"]
    assert returned["data"]["items"] == [{"sku": "A", "quantity": 1}]


async def test_the_simulated_carrier_walks_a_parcel_to_delivered(sessions, settings):
    simulated = settings.model_copy(update={"carrier_simulation": True, "simulation_step_seconds": 0.01})
    await handle_create_shipment(create("o1"), sessions, simulated)
    seen = []
    for _ in range(10):
        async with sessions.begin() as session:  # time passes: every step is due
            await session.execute(update(Shipment).where(Shipment.next_step_at.is_not(None))
                                  .values(next_step_at=datetime.now(UTC) - timedelta(seconds=1)))
        if not await carrier.tick(sessions, 0.01):
            break
        async with sessions() as session:
            seen.append((await session.scalar(select(Shipment))).status)
    assert seen == ["picked_up", "in_transit", "out_for_delivery", "delivered"]


async def test_shipments_are_listed_for_the_consistency_check(client, sessions, settings):
    for order_id in ("o1", "o2", "o3"):
        await handle_create_shipment(create(order_id), sessions, settings)
    page = (await client.get("/v1/shipments", params={"limit": 2}, headers=ADMIN)).json()
    assert [s["order_id"] for s in page["items"]] == ["o1", "o2"] and page["next"] == "o2"
    rest = (await client.get("/v1/shipments", params={"after": "o2"}, headers=ADMIN)).json()
    assert [s["order_id"] for s in rest["items"]] == ["o3"] and rest["next"] is None


async def test_scans_that_overtake_each_other_never_move_the_parcel_back(client, sessions, settings):
    tracking = await _tracking(client, sessions, settings)
    late = {"tracking_number": tracking, "status": "in_transit", "at": "2026-11-24T10:00:00Z"}
    delivered = {"tracking_number": tracking, "status": "delivered", "at": "2026-11-24T12:00:00Z"}
    answer = (await client.post("/v1/carriers/sf-express/events", json=delivered, headers=ADMIN)).json()
    assert (answer["status"], answer["accepted"]) == ("delivered", True)
    answer = (await client.post("/v1/carriers/sf-express/events", json=late, headers=ADMIN)).json()
    assert (answer["status"], answer["accepted"]) == ("delivered", False)
    assert [e["data"]["status"] for e in await events(sessions) if e["key"] == "shipment.updated"] == ["delivered"]


async def test_a_return_scan_before_the_return_is_expected_is_ignored(client, sessions, settings):
    tracking = await _tracking(client, sessions, settings)
    delivered = {"tracking_number": tracking, "status": "delivered", "at": "2026-11-24T10:00:00Z"}
    returned = {"tracking_number": tracking, "status": "returned", "at": "2026-11-24T11:00:00Z"}
    await client.post("/v1/carriers/sf-express/events", json=delivered, headers=ADMIN)
    answer = (await client.post("/v1/carriers/sf-express/events", json=returned, headers=ADMIN)).json()
    assert (answer["status"], answer["accepted"]) == ("delivered", False)
    assert not [e for e in await events(sessions) if e["key"] == "shipment.returned"]


async def test_the_simulated_carrier_drops_a_parcel_with_no_next_step(sessions, settings):
    simulated = settings.model_copy(update={"carrier_simulation": True, "simulation_step_seconds": 0.01})
    await handle_create_shipment(create("o1"), sessions, simulated)
    async with sessions.begin() as session:  # delivered, yet still on the schedule
        await session.execute(update(Shipment).values(status="delivered", next_step_at=datetime.now(UTC) - timedelta(seconds=1)))
    assert await carrier.tick(sessions, 0.01) == 0
    async with sessions() as session:
        shipment = await session.scalar(select(Shipment))
    assert (shipment.status, shipment.next_step_at) == ("delivered", None)


async def test_a_cancel_and_a_scan_racing_for_one_parcel_are_never_both_taken(any_sessions, settings, monkeypatch):
    """Both read the parcel before either writes: without a lock on its row, PostgreSQL takes both
    (a parcel cancelled and picked up, both told), so the order would be refunded and shipped."""
    sessions = any_sessions
    await handle_create_shipment(create("o1"), sessions, settings)
    async with sessions() as session:
        tracking = (await parcels.by_order(session, "o1")).tracking_number

    # Both read the parcel before either goes on (unless a lock keeps one from reading).
    meeting = Meeting()
    monkeypatch.setattr(parcels, "by_order", meeting.after(parcels.by_order))
    monkeypatch.setattr(parcels, "by_tracking", meeting.after(parcels.by_tracking))

    async def scan() -> bool | str:
        async with sessions.begin() as session:
            shipment = await parcels.by_tracking(session, tracking)
            try:
                return await parcels.report(session, shipment, St.PICKED_UP, datetime.now(UTC), "Shanghai")
            except parcels.Refused:
                return "refused"

    _, scanned = await asyncio.gather(handle_cancel_shipment(cancel(), sessions), scan())

    told = [e["key"] for e in await events(sessions)][1:]
    assert told in (["shipment.cancelled"], ["shipment.updated"])
    async with sessions() as session:
        row = (await session.execute(select(Shipment.status, Shipment.cancelled))).one()
    assert (tuple(row), scanned) in {(("created", True), "refused"), (("picked_up", False), True)}
