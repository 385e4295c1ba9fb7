"""Admission control at the door (orders.admission): while the orders in flight would take too
long to be paid at the recent pace, a new order is refused with 503 and Retry-After, and nothing
is stored."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from orders_support import BODY, GATEWAY, OPS, outbox
from prometheus_client import CollectorRegistry
from sqlalchemy import func, insert, select, update

from events.orders import PlaceOrder
from orders import service
from orders.admission import Admission, Overloaded
from orders.db import IdempotencyKey, Order, OrderHistory


@pytest.fixture
def settings(settings):
    return settings.model_copy(update={"admission_max_wait_seconds": 5.0, "admission_min_in_flight": 2})


async def post(client, key: str):
    return await client.post("/v1/orders", json=BODY, headers={**GATEWAY, "Idempotency-Key": key})


async def in_flight(sessions, settings, n: int) -> list[str]:
    """``n`` orders placed past the door, waiting for their stock answer."""
    request = PlaceOrder.model_validate(BODY)
    return [
        (
            await service.place_order(
                sessions, request, key=f"setup-{uuid.uuid4()}", actor="dev-gateway", settings=settings
            )
        ).order_id
        for _ in range(n)
    ]


async def paid(sessions, order_ids: list[str], *, seconds_ago: float = 1.0) -> None:
    at = datetime.now(UTC) - timedelta(seconds=seconds_ago)
    async with sessions.begin() as session:
        await session.execute(update(Order).where(Order.id.in_(order_ids)).values(status="paid"))
        await session.execute(
            insert(OrderHistory),
            [{"order_id": i, "status": "paid", "reason": None, "at": at} for i in order_ids],
        )


async def count(sessions, what) -> int:
    async with sessions() as session:
        return await session.scalar(select(func.count()).select_from(what))


async def test_new_orders_are_refused_while_too_many_are_in_flight_and_nothing_is_stored(
    client, sessions, settings
):
    await paid(sessions, await in_flight(sessions, settings, 1))  # orders move, slowly: the minimum, 2, holds
    assert (await post(client, "a")).status_code == 202
    assert (await post(client, "b")).status_code == 202  # one in flight: fewer than the minimum, 2
    before = await outbox(sessions)

    refused = await post(client, "c")  # two in flight
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "3"
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["type"].endswith("/overloaded") and "Idempotency-Key" in refused.json()["detail"]
    assert await count(sessions, Order) == 3 and await count(sessions, IdempotencyKey) == 3
    assert await outbox(sessions) == before

    # a key accepted before is answered as always: a gateway that lost its 202 gets its order
    again = await post(client, "a")
    assert again.status_code == 202 and again.headers["Location"].startswith("/v1/orders/ord_")
    # ops see the closed door
    ops = (await client.get("/v1/ops/summary", headers=OPS)).json()
    assert ops["admission"] == {"open": False, "refused": 1}
    await client.post("/ops/sign-in", data={"api_key": "dev-ops-key"})  # and so does the console
    assert "closed: refusing with 503" in (await client.get("/ops")).text


async def test_the_door_opens_again_when_orders_are_paid(client, sessions, settings):
    await paid(sessions, await in_flight(sessions, settings, 1))
    waiting = await in_flight(sessions, settings, 3)
    assert (await post(client, "d")).status_code == 503
    async with sessions.begin() as session:  # confirmed still waits for its payment: in flight
        await session.execute(update(Order).where(Order.id == waiting[0]).values(status="confirmed"))
    assert (await post(client, "d")).status_code == 503
    await paid(sessions, waiting[:2])
    placed = await post(client, "d")  # the same key as the refused request: now placed
    assert placed.status_code == 202
    assert await count(sessions, Order) == 5


async def test_the_recent_pace_lets_more_in_flight(client, sessions, settings):
    # 10 orders paid in the last 5 s: 2 a second, so 10 may wait (5 s at that pace)
    await paid(sessions, await in_flight(sessions, settings, 10), seconds_ago=2)
    await in_flight(sessions, settings, 9)
    assert (await post(client, "e")).status_code == 202  # the 10th in flight
    assert (await post(client, "f")).status_code == 503


async def test_while_nothing_moves_only_the_minimum_is_let_in(client, sessions, settings):
    await paid(sessions, await in_flight(sessions, settings, 10), seconds_ago=6)  # before the window
    await in_flight(sessions, settings, 1)
    assert (await post(client, "e")).status_code == 202
    assert (await post(client, "f")).status_code == 503


async def test_while_the_broker_is_out_of_reach_the_door_stays_open(sessions, settings):
    """The outbox holds what is accepted until the broker is back."""
    await in_flight(sessions, settings, 5)
    broker_down = True
    door = Admission(
        max_wait_seconds=5.0,
        min_in_flight=2,
        refresh_seconds=0,
        registry=CollectorRegistry(),
        outage=lambda: broker_down,
    )
    async with sessions() as session:
        await door.check(session, datetime.now(UTC))  # does not raise
        broker_down = False
        with pytest.raises(Overloaded):
            await door.check(session, datetime.now(UTC))


async def test_zero_turns_the_check_off(sessions, settings):
    await in_flight(sessions, settings, 3)
    door = Admission(max_wait_seconds=0, min_in_flight=1, refresh_seconds=0, registry=CollectorRegistry())
    async with sessions() as session:
        await door.check(session, datetime.now(UTC))  # does not raise


async def test_the_backlog_is_read_at_most_once_per_refresh(sessions, settings):
    door = Admission(max_wait_seconds=5.0, min_in_flight=3, refresh_seconds=2, registry=CollectorRegistry())
    now = datetime.now(UTC)

    async def check(at: datetime) -> None:
        async with sessions() as session:
            await door.check(session, at)

    await paid(sessions, await in_flight(sessions, settings, 1))
    await check(now)  # let in: 1 in flight, not stored yet
    await in_flight(sessions, settings, 1)  # stored past this door: the reading does not see it yet
    await check(now + timedelta(seconds=1.9))  # the reading of 1.9 s ago stands: 2 in flight
    with pytest.raises(Overloaded):  # read again: 1 in the table and the 2 let in, not stored yet
        await check(now + timedelta(seconds=2))


async def test_orders_let_in_count_until_they_are_stored(sessions, settings):
    """A burst: requests the door let in still wait for the database; the table does not count
    them yet, the door does."""
    door = Admission(max_wait_seconds=5.0, min_in_flight=3, refresh_seconds=0, registry=CollectorRegistry())
    await paid(sessions, await in_flight(sessions, settings, 1))
    async with sessions() as session:
        for _ in range(3):
            await door.check(session, datetime.now(UTC))
        with pytest.raises(Overloaded):
            await door.check(session, datetime.now(UTC))
        door.settled()  # one of them stored, or failed: no longer counted by the door
        await door.check(session, datetime.now(UTC))


async def test_the_door_counts_orders_every_replica_let_in(sessions, settings):
    """Another replica let two requests in: their keys are stored in progress, their orders not
    yet. This replica's door counts them; a key in progress past the abandon time is not counted."""
    await paid(sessions, await in_flight(sessions, settings, 1))
    now = datetime.now(UTC)
    async with sessions.begin() as session:
        await session.execute(
            insert(IdempotencyKey),
            [
                {
                    "key": f"other-{n}",
                    "fingerprint": "f",
                    "state": "in_progress",
                    "order_id": None,
                    "created_at": at,
                }
                for n, at in enumerate([now, now, now - timedelta(seconds=31)])
            ],
        )
    door = Admission(
        max_wait_seconds=5.0,
        min_in_flight=3,
        refresh_seconds=0,
        registry=CollectorRegistry(),
        abandoned_seconds=30,
    )
    async with sessions() as session:
        await door.check(session, now)  # two in flight (the abandoned one is not): the third is let in
        with pytest.raises(Overloaded):  # three
            await door.check(session, now)
