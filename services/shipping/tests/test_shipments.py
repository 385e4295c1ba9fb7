"""Commands, carrier reports and the simulated carrier, on SQLite; a cancel racing a carrier's
scan, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from concurrency import Meeting
from sqlalchemy import select, update

from chassis.db import outbox_message
from events.envelope import Envelope, build
from events.orders import Address
from events.shipping import CancelShipment, ChangeShipmentAddress, CreateShipment, ExpectReturn
from events.types import LineItem
from events.types import ShipmentStatus as St
from shipping import carriers, service
from shipping.db import Shipment
from shipping.handlers import (
    handle_cancel_shipment,
    handle_change_address,
    handle_create_shipment,
    handle_expect_return,
)

ADMIN = {"Authorization": "Bearer dev-admin-key"}
SECRET = "dev-carrier-secret"
ADDRESS = Address(name="Lin Mei", line1="1 Century Ave", city="Shanghai", postal_code="200120", country="CN")


async def post_scan(
    client, path: str, report: dict, *, secret: str = SECRET, t: int | None = None, headers=None
):
    """A carrier's scan, signed as carriers sign (CONTRACT §7)."""
    body = json.dumps(report).encode()
    signed = {"X-OMS-Signature": carriers.sign(secret, body, t), "Content-Type": "application/json"}
    return await client.post(path, content=body, headers={**signed, **(headers or {})})


def msg(model, payload):
    return Envelope[model].model_validate(build(payload, service="orders", subject=payload.order_id))


def create(order_id: str, country: str = "CN"):
    return msg(
        CreateShipment,
        CreateShipment(
            order_id=order_id,
            warehouse="SH",
            address=ADDRESS.model_copy(update={"country": country}),
            items=[LineItem(sku="A", quantity=1)],
        ),
    )


async def events(sessions) -> list[dict]:
    async with sessions() as session:
        rows = (await session.execute(select(outbox_message).order_by(outbox_message.c.seq))).mappings().all()
    return [{"key": r["routing_key"], **json.loads(r["body"])} for r in rows]


async def test_one_parcel_per_order_whatever_is_resent(sessions, settings, adapters):
    first = create("o1")
    await handle_create_shipment(first, sessions, settings, adapters)
    await handle_create_shipment(first, sessions, settings, adapters)
    await handle_create_shipment(create("o1"), sessions, settings, adapters)
    created = await events(sessions)
    assert [e["key"] for e in created] == ["shipment.created", "shipment.created"]
    assert created[0]["data"]["tracking_number"] == created[1]["data"]["tracking_number"]
    assert created[0]["data"]["carrier"] == "sf-express"
    assert "Century" not in json.dumps(created), "the address never leaves the service"


async def test_a_booking_whose_commit_failed_is_asked_again_by_the_same_reference(
    sessions, settings, adapters, monkeypatch
):
    """The carrier is booked before the commit; a redelivery after a failed commit must not book a
    second parcel: it asks again with the same reference and records the parcel first booked."""
    sf = adapters["sf-express"]
    asked: list[tuple[str, str]] = []
    book = sf.book

    async def recording_book(**kwargs):
        booking = await book(**kwargs)
        asked.append((kwargs["reference"], booking.tracking_number))
        return booking

    monkeypatch.setattr(sf, "book", recording_book)
    stage = service._stage

    async def commit_fails_once(*args, **kwargs):
        monkeypatch.setattr(service, "_stage", stage)
        raise ConnectionResetError("the database went away before the commit")

    monkeypatch.setattr(service, "_stage", commit_fails_once)
    delivery = create("o1")
    with pytest.raises(ConnectionResetError):
        await handle_create_shipment(delivery, sessions, settings, adapters)
    assert await events(sessions) == [], "nothing was committed"
    await handle_create_shipment(delivery, sessions, settings, adapters)  # redelivered
    [created] = await events(sessions)
    assert [reference for reference, _ in asked] == ["o1:SH", "o1:SH"], "one booking, asked for twice"
    assert {number for _, number in asked} == {created["data"]["tracking_number"]}


async def test_no_carrier_for_antarctica(sessions, settings, adapters):
    await handle_create_shipment(create("o1", "AQ"), sessions, settings, adapters)
    [failed] = await events(sessions)
    assert (failed["key"], failed["data"]["reason"]) == ("shipment.failed", "no_carrier")


def cancel(order_id: str = "o1"):
    return msg(CancelShipment, CancelShipment(order_id=order_id, reason="customer_request"))


async def test_a_cancel_that_overtakes_the_create_books_no_parcel(sessions, settings, adapters):
    await handle_cancel_shipment(cancel(), sessions, adapters)
    await handle_create_shipment(create("o1"), sessions, settings, adapters)
    cancelled, failed = await events(sessions)
    assert cancelled["key"] == "shipment.cancelled" and cancelled["data"] == {
        "order_id": "o1",
        "shipment_id": None,
        "shipment_ids": [],
        "parcels": [],
    }
    assert (failed["key"], failed["data"]["reason"]) == ("shipment.failed", "cancelled")


async def _tracking(client, sessions, settings, adapters, order_id="o1") -> str:
    await handle_create_shipment(create(order_id), sessions, settings, adapters)
    return (await client.get(f"/v1/shipments/{order_id}", headers=ADMIN)).json()["tracking_number"]


async def test_carrier_reports_move_the_parcel_once(client, sessions, settings, adapters):
    tracking = await _tracking(client, sessions, settings, adapters)
    report = {
        "tracking_number": tracking,
        "status": "picked_up",
        "at": "2026-11-24T10:00:00Z",
        "location": "Shanghai",
    }
    assert (await post_scan(client, "/v1/carriers/sf-express/events", report)).status_code == 202
    again = await post_scan(client, "/v1/carriers/sf-express/events", report)  # replayed, freshly signed
    assert again.status_code == 202 and again.json()["accepted"] is False
    updates = [e for e in await events(sessions) if e["key"] == "shipment.updated"]
    assert len(updates) == 1 and updates[0]["data"]["status"] == "picked_up"
    assert (await post_scan(client, "/v1/carriers/dhl/events", report)).status_code == 404
    assert (
        await post_scan(client, "/v1/carriers/sf-express/events", {**report, "tracking_number": "X"})
    ).status_code == 404
    bad = await post_scan(client, "/v1/carriers/sf-express/events", {**report, "status": "misplaced"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "status"


async def _unchanged(client, sessions, tracking: str) -> tuple:
    parcel = (await client.get("/v1/shipments/o1", headers=ADMIN)).json()
    return parcel["status"], parcel["estimated_delivery"], len(parcel["events"]), len(await events(sessions))


async def test_unsigned_wrongly_signed_and_stale_scans_are_refused_and_change_nothing(
    client, sessions, settings, adapters
):
    tracking = await _tracking(client, sessions, settings, adapters)
    before = await _unchanged(client, sessions, tracking)
    returned = {"tracking_number": tracking, "status": "lost", "at": "2026-11-24T10:00:00Z"}
    path = "/v1/carriers/sf-express/events"

    def now() -> int:  # read at each post: a slow machine must not move a case across the 300 s edge
        return int(time.time())

    refused = [
        await client.post(path, json=returned),  # unsigned
        await client.post(path, json=returned, headers=ADMIN),  # an API key is no signature, even admin's
        await post_scan(client, path, returned, secret="not-the-secret"),
        await post_scan(client, path, returned, t=now() - 310),  # stale
        await post_scan(client, path, returned, t=now() + 310),  # from the future
        await post_scan(client, path, returned, headers={"X-OMS-Signature": f"t={now()},v1=00"}),
        await post_scan(client, path, returned, headers={"X-OMS-Signature": "garbage"}),
    ]
    assert [r.status_code for r in refused] == [401] * len(refused)
    assert all(r.json()["type"].endswith("bad-signature") for r in refused)
    # the body signed is the body read: one byte changed after signing breaks it
    body = json.dumps({**returned, "status": "in_transit"}).encode()
    forged = body.replace(b"in_transit", b"lost_______"[:10])
    tampered = await client.post(
        path, content=forged, headers={"X-OMS-Signature": carriers.sign(SECRET, body)}
    )
    assert tampered.status_code == 401
    assert await _unchanged(client, sessions, tracking) == before
    assert (await post_scan(client, path, returned, t=now() - 290)).status_code == 202  # inside the window


async def test_each_carrier_signs_with_its_own_secret(client, sessions, settings, adapters):
    own = carriers.adapters({"sf-express": "sf-secret"}, default_secret=SECRET, window=300)
    client_app = client._transport.app  # the same app, the secrets configured per carrier
    client_app.state.carriers = own
    tracking = await _tracking(client, sessions, settings, adapters)
    report = {"tracking_number": tracking, "status": "picked_up", "at": "2026-11-24T10:00:00Z"}
    assert (await post_scan(client, "/v1/carriers/sf-express/events", report)).status_code == 401
    assert (
        await post_scan(client, "/v1/carriers/sf-express/events", report, secret="sf-secret")
    ).status_code == 202


async def test_the_estimate_follows_the_scans_and_the_trail_is_shown(client, sessions, settings, adapters):
    tracking = await _tracking(client, sessions, settings, adapters)
    path = "/v1/carriers/sf-express/events"
    day = datetime.now(UTC).date()  # the scans come after the booking

    def on(days: int, hour: int = 10) -> str:
        return f"{day + timedelta(days=days)}T{hour:02d}:00:00Z"

    scans = [
        ("picked_up", on(1)),
        ("exception", on(3)),
        ("out_for_delivery", on(4, 8)),
        ("delivered", on(4, 15)),
    ]
    etas = []
    for status, at in scans:
        await post_scan(
            client, path, {"tracking_number": tracking, "status": status, "at": at, "location": "Shanghai"}
        )
        etas.append((await client.get("/v1/shipments/o1", headers=ADMIN)).json()["estimated_delivery"])
    # picked up: sf-express takes 2 days; a failed attempt puts it off a day; out for delivery: that day
    assert etas == [str(day + timedelta(days=n)) for n in (3, 4, 4, 4)]
    updates = [e["data"] for e in await events(sessions) if e["key"] == "shipment.updated"]
    assert [u["estimated_delivery"] for u in updates] == etas
    parcel = (await client.get("/v1/shipments/o1", headers=ADMIN)).json()
    assert [e["status"] for e in parcel["events"]] == [
        "created",
        "picked_up",
        "exception",
        "out_for_delivery",
        "delivered",
    ]
    assert parcel["items"] == [{"sku": "A", "quantity": 1}]
    by_id = (await client.get(f"/v1/shipments/{parcel['shipment_id']}", headers=ADMIN)).json()
    assert by_id == parcel
    trail = await adapters["sf-express"].trail(tracking)
    assert [s.status for s in trail] == ["created", "picked_up", "exception", "out_for_delivery", "delivered"]


async def test_a_carrier_may_give_its_own_estimate(client, sessions, settings, adapters):
    tracking = await _tracking(client, sessions, settings, adapters)
    scan = {
        "tracking_number": tracking,
        "status": "in_transit",
        "at": "2026-11-24T10:00:00Z",
        "estimated_delivery": "2026-11-30",
    }
    assert (await post_scan(client, "/v1/carriers/sf-express/events", scan)).json()[
        "estimated_delivery"
    ] == "2026-11-30"


async def test_a_cancelled_parcel_takes_no_more_reports(client, sessions, settings, adapters):
    tracking = await _tracking(client, sessions, settings, adapters)
    await handle_cancel_shipment(cancel(), sessions, adapters)
    [answer] = [e for e in await events(sessions) if e["key"] == "shipment.cancelled"]
    assert answer["data"]["shipment_id"].startswith("shp_")
    report = {"tracking_number": tracking, "status": "picked_up", "at": "2026-11-24T10:00:00Z"}
    assert (await post_scan(client, "/v1/carriers/sf-express/events", report)).status_code == 409


async def test_a_cancel_after_the_carrier_took_the_parcel_is_answered_by_its_scan_alone(
    client, sessions, settings, adapters
):
    tracking = await _tracking(client, sessions, settings, adapters)
    report = {"tracking_number": tracking, "status": "picked_up", "at": "2026-11-24T10:00:00Z"}
    assert (await post_scan(client, "/v1/carriers/sf-express/events", report)).status_code == 202
    await handle_cancel_shipment(cancel(), sessions, adapters)
    assert [e["key"] for e in await events(sessions)] == ["shipment.created", "shipment.updated"]
    shipment = (await client.get("/v1/shipments/o1", headers=ADMIN)).json()
    assert (shipment["status"], shipment["cancelled"]) == ("picked_up", False)


async def test_an_expected_return_is_told_as_shipment_returned(client, sessions, settings, adapters):
    tracking = await _tracking(client, sessions, settings, adapters)
    for i, status in enumerate(("picked_up", "delivered", "returned")):
        if status == "returned":
            await handle_expect_return(
                msg(ExpectReturn, ExpectReturn(order_id="o1", items=[LineItem(sku="A", quantity=1)])),
                sessions,
            )
        report = {"tracking_number": tracking, "status": status, "at": f"2026-11-24T1{i}:00:00Z"}
        assert (await post_scan(client, "/v1/carriers/sf-express/events", report)).status_code == 202
    [returned] = [e for e in await events(sessions) if e["key"] == "shipment.returned"]
    assert returned["data"]["items"] == [{"sku": "A", "quantity": 1}]


async def test_the_simulated_carrier_walks_a_parcel_to_delivered(sessions, settings, adapters):
    simulated = settings.model_copy(update={"carrier_simulation": True, "simulation_step_seconds": 0.01})
    await handle_create_shipment(create("o1"), sessions, simulated, adapters)
    seen = []
    for _ in range(10):
        async with sessions.begin() as session:  # time passes: every step is due
            await session.execute(
                update(Shipment)
                .where(Shipment.next_step_at.is_not(None))
                .values(next_step_at=datetime.now(UTC) - timedelta(seconds=1))
            )
        if not await service.simulate_step(sessions, 0.01):
            break
        async with sessions() as session:
            seen.append((await session.scalar(select(Shipment))).status)
    assert seen == ["picked_up", "in_transit", "out_for_delivery", "delivered"]


async def test_shipments_are_listed_for_the_consistency_check(client, sessions, settings, adapters):
    for order_id in ("o1", "o2", "o3"):
        await handle_create_shipment(create(order_id), sessions, settings, adapters)
    page = (await client.get("/v1/shipments", params={"limit": 2}, headers=ADMIN)).json()
    assert [s["order_id"] for s in page["items"]] == ["o1", "o2"] and page["next"] == "o2"
    rest = (await client.get("/v1/shipments", params={"after": "o2"}, headers=ADMIN)).json()
    assert [s["order_id"] for s in rest["items"]] == ["o3"] and rest["next"] is None


async def test_scans_that_overtake_each_other_never_move_the_parcel_back(
    client, sessions, settings, adapters
):
    tracking = await _tracking(client, sessions, settings, adapters)
    late = {"tracking_number": tracking, "status": "in_transit", "at": "2026-11-24T10:00:00Z"}
    delivered = {"tracking_number": tracking, "status": "delivered", "at": "2026-11-24T12:00:00Z"}
    answer = (await post_scan(client, "/v1/carriers/sf-express/events", delivered)).json()
    assert (answer["status"], answer["accepted"]) == ("delivered", True)
    answer = (await post_scan(client, "/v1/carriers/sf-express/events", late)).json()
    assert (answer["status"], answer["accepted"]) == ("delivered", False)
    assert [e["data"]["status"] for e in await events(sessions) if e["key"] == "shipment.updated"] == [
        "delivered"
    ]


async def test_a_return_scan_before_the_return_is_expected_is_ignored(client, sessions, settings, adapters):
    tracking = await _tracking(client, sessions, settings, adapters)
    delivered = {"tracking_number": tracking, "status": "delivered", "at": "2026-11-24T10:00:00Z"}
    returned = {"tracking_number": tracking, "status": "returned", "at": "2026-11-24T11:00:00Z"}
    await post_scan(client, "/v1/carriers/sf-express/events", delivered)
    answer = (await post_scan(client, "/v1/carriers/sf-express/events", returned)).json()
    assert (answer["status"], answer["accepted"]) == ("delivered", False)
    assert not [e for e in await events(sessions) if e["key"] == "shipment.returned"]


async def test_the_simulated_carrier_drops_a_parcel_with_no_next_step(sessions, settings, adapters):
    simulated = settings.model_copy(update={"carrier_simulation": True, "simulation_step_seconds": 0.01})
    await handle_create_shipment(create("o1"), sessions, simulated, adapters)
    async with sessions.begin() as session:  # delivered, yet still on the schedule
        await session.execute(
            update(Shipment).values(status="delivered", next_step_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    assert await service.simulate_step(sessions, 0.01) == 0
    async with sessions() as session:
        shipment = await session.scalar(select(Shipment))
    assert (shipment.status, shipment.next_step_at) == ("delivered", None)


async def test_a_cancel_and_a_scan_racing_for_one_parcel_are_never_both_taken(
    any_sessions, settings, monkeypatch, adapters
):
    """Both read the parcel before either writes: without a lock on its row, PostgreSQL takes both
    (a parcel cancelled and picked up, both told), so the order would be refunded and shipped."""
    sessions = any_sessions
    await handle_create_shipment(create("o1"), sessions, settings, adapters)
    async with sessions() as session:
        tracking = (await service.by_order(session, "o1")).tracking_number

    # Both read the parcel before either goes on (unless a lock keeps one from reading).
    meeting = Meeting()
    monkeypatch.setattr(service, "by_order", meeting.after(service.by_order))
    monkeypatch.setattr(service, "by_tracking", meeting.after(service.by_tracking))

    async def scan() -> bool | str:
        async with sessions.begin() as session:
            shipment = await service.by_tracking(session, tracking)
            try:
                return await service.report(session, shipment, St.PICKED_UP, datetime.now(UTC), "Shanghai")
            except service.Refused:
                return "refused"

    _, scanned = await asyncio.gather(handle_cancel_shipment(cancel(), sessions, adapters), scan())

    told = [e["key"] for e in await events(sessions)][1:]
    assert told in (["shipment.cancelled"], ["shipment.updated"])
    async with sessions() as session:
        row = (await session.execute(select(Shipment.status, Shipment.cancelled))).one()
    assert (tuple(row), scanned) in {(("created", True), "refused"), (("picked_up", False), True)}


async def test_an_order_from_two_warehouses_ships_two_parcels_and_a_cancel_stops_the_one_not_left(
    client, sessions, settings, adapters
):
    for warehouse in ("SH", "BJ"):
        command = create("o1").data.model_copy(update={"warehouse": warehouse, "parcel": warehouse})
        await handle_create_shipment(msg(CreateShipment, command), sessions, settings, adapters)
    created = [e["data"] for e in await events(sessions) if e["key"] == "shipment.created"]
    assert [c["parcel"] for c in created] == ["SH", "BJ"] and created[0]["tracking_number"] != created[1][
        "tracking_number"
    ]
    assert created[0]["tracking_url"].endswith(created[0]["tracking_number"])
    report = {
        "tracking_number": created[0]["tracking_number"],
        "status": "picked_up",
        "at": "2026-11-24T10:00:00Z",
    }
    assert (await post_scan(client, "/v1/carriers/sf-express/events", report)).status_code == 202
    await handle_cancel_shipment(cancel(), sessions, adapters)
    [answer] = [e["data"] for e in await events(sessions) if e["key"] == "shipment.cancelled"]
    assert (answer["parcels"], answer["shipment_ids"]) == (["BJ"], [created[1]["shipment_id"]])


async def test_an_address_change_goes_to_every_parcel_the_carrier_has_not_collected(
    client, sessions, settings, adapters
):
    for warehouse in ("SH", "BJ", "FRA"):
        command = create("o1").data.model_copy(update={"warehouse": warehouse, "parcel": warehouse})
        await handle_create_shipment(msg(CreateShipment, command), sessions, settings, adapters)
    created = [e["data"] for e in await events(sessions) if e["key"] == "shipment.created"]
    report = {
        "tracking_number": created[0]["tracking_number"],
        "status": "picked_up",
        "at": "2026-11-24T10:00:00Z",
    }
    assert (await post_scan(client, "/v1/carriers/sf-express/events", report)).status_code == 202
    moved = ADDRESS.model_copy(update={"line1": "99 Nanjing Rd"})
    await handle_change_address(
        msg(ChangeShipmentAddress, ChangeShipmentAddress(order_id="o1", address=moved)), sessions
    )
    async with sessions() as session:
        lines = [(s.parcel, s.address["line1"]) for s in await service.of_order(session, "o1")]
    assert lines == [("SH", "1 Century Ave"), ("BJ", "99 Nanjing Rd"), ("FRA", "99 Nanjing Rd")]


async def test_a_return_names_the_parcels_the_items_came_in(client, sessions, settings, adapters):
    for warehouse in ("SH", "BJ"):
        command = create("o1").data.model_copy(update={"warehouse": warehouse, "parcel": warehouse})
        await handle_create_shipment(msg(CreateShipment, command), sessions, settings, adapters)
    created = [e["data"] for e in await events(sessions) if e["key"] == "shipment.created"]
    for parcel in created:
        report = {
            "tracking_number": parcel["tracking_number"],
            "status": "delivered",
            "at": "2026-11-24T10:00:00Z",
        }
        assert (await post_scan(client, "/v1/carriers/sf-express/events", report)).status_code == 202
    await handle_expect_return(
        msg(ExpectReturn, ExpectReturn(order_id="o1", items=[LineItem(sku="A", quantity=2)])), sessions
    )
    async with sessions() as session:
        expected = [
            (s.parcel, s.return_expected, s.return_items) for s in await service.of_order(session, "o1")
        ]
    assert expected == [
        ("SH", True, [{"sku": "A", "quantity": 1}]),
        ("BJ", True, [{"sku": "A", "quantity": 1}]),
    ]


async def test_a_parcel_sent_instead_of_a_lost_one_names_it_in_its_news(client, sessions, settings, adapters):
    await handle_create_shipment(create("o1"), sessions, settings, adapters)
    [first] = [e["data"] for e in await events(sessions) if e["key"] == "shipment.created"]
    lost = {"tracking_number": first["tracking_number"], "status": "picked_up", "at": "2026-11-24T10:00:00Z"}
    await post_scan(client, "/v1/carriers/sf-express/events", lost)
    await post_scan(
        client, "/v1/carriers/sf-express/events", {**lost, "status": "lost", "at": "2026-11-25T10:00:00Z"}
    )
    again = CreateShipment(
        order_id="o1",
        warehouse="SH",
        address=ADDRESS,
        items=[LineItem(sku="A", quantity=1)],
        parcel="SH+1",
        replaces="SH",
    )
    await handle_create_shipment(msg(CreateShipment, again), sessions, settings, adapters)
    second = [e["data"] for e in await events(sessions) if e["key"] == "shipment.created"][-1]
    assert second["parcel"] == "SH+1" and second["tracking_number"] != first["tracking_number"]
    assert second["replaces"] == first["tracking_number"]
    scan = {"tracking_number": second["tracking_number"], "status": "picked_up", "at": "2026-11-26T10:00:00Z"}
    assert (await post_scan(client, "/v1/carriers/sf-express/events", scan)).status_code == 202
    update = [e["data"] for e in await events(sessions) if e["key"] == "shipment.updated"][-1]
    assert (update["tracking_number"], update["replaces"]) == (
        second["tracking_number"],
        first["tracking_number"],
    )
