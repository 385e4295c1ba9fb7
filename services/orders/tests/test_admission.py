"""Admission control at the door (orders.admission): while too many accepted orders wait too long
to be paid, a new order is refused with 503 and Retry-After, and nothing is stored."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from orders_support import BODY, GATEWAY, OPS, outbox
from prometheus_client import CollectorRegistry
from sqlalchemy import func, select, update

from orders.admission import Admission, Overloaded
from orders.db import IdempotencyKey, Order


@pytest.fixture
def settings(settings):
    return settings.model_copy(update={"admission_max_wait_seconds": 5.0, "admission_late_orders": 2})


async def post(client, key: str):
    return await client.post("/v1/orders", json=BODY, headers={**GATEWAY, "Idempotency-Key": key})


async def age_submitted(sessions, seconds: float) -> None:
    """The orders not paid yet were placed ``seconds`` ago."""
    async with sessions.begin() as session:
        await session.execute(update(Order).where(Order.status.in_(("submitted", "confirmed")))
                              .values(created_at=datetime.now(UTC) - timedelta(seconds=seconds)))


async def count(sessions, what) -> int:
    async with sessions() as session:
        return await session.scalar(select(func.count()).select_from(what))


async def test_new_orders_are_refused_while_too_many_wait_too_long_and_nothing_is_stored(client, sessions):
    assert (await post(client, "a")).status_code == 202
    assert (await post(client, "b")).status_code == 202
    await age_submitted(sessions, 4)  # waiting, but not too long yet
    assert (await post(client, "c")).status_code == 202
    await age_submitted(sessions, 6)
    before = await outbox(sessions)

    refused = await post(client, "d")
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
    assert "closed: refusing with 503" in (await client.get("/ops", headers=OPS)).text


def _first(n: int):
    return select(Order.id).order_by(Order.created_at, Order.id).limit(n).scalar_subquery()


async def test_the_door_opens_again_when_the_orders_are_paid(client, sessions):
    for key in "abc":
        assert (await post(client, key)).status_code == 202
    await age_submitted(sessions, 60)
    assert (await post(client, "d")).status_code == 503
    async with sessions.begin() as session:  # one confirmed, which still waits for its payment
        await session.execute(update(Order).where(Order.id.in_(_first(1))).values(status="confirmed"))
    assert (await post(client, "d")).status_code == 503
    async with sessions.begin() as session:  # two of them paid: one is left waiting, fewer than 2
        await session.execute(update(Order).where(Order.id.in_(_first(2))).values(status="paid"))
    placed = await post(client, "d")  # the same key as the refused request: now placed
    assert placed.status_code == 202
    assert await count(sessions, Order) == 4


async def test_orders_stuck_on_their_own_do_not_close_the_door(client, sessions):
    assert (await post(client, "a")).status_code == 202
    await age_submitted(sessions, 3600)  # one order stuck for an hour, fewer than admission_late_orders
    assert (await post(client, "b")).status_code == 202


@pytest.mark.parametrize(("max_wait", "late_orders"), [(0, 2), (5.0, 0)])
async def test_zero_turns_the_check_off(client, sessions, max_wait, late_orders):
    for key in "abc":
        assert (await post(client, key)).status_code == 202
    await age_submitted(sessions, 60)
    door = Admission(max_wait_seconds=max_wait, late_orders=late_orders, refresh_seconds=0, registry=CollectorRegistry())
    async with sessions() as session:
        await door.check(session, datetime.now(UTC))  # does not raise


async def test_the_backlog_is_read_at_most_once_per_refresh(client, sessions):
    door = Admission(max_wait_seconds=5.0, late_orders=1, refresh_seconds=60, registry=CollectorRegistry())
    now = datetime.now(UTC)

    async def check(at: datetime) -> None:
        async with sessions() as session:
            await door.check(session, at)

    await check(now)
    assert (await post(client, "a")).status_code == 202
    await age_submitted(sessions, 60)
    await check(now + timedelta(seconds=59))  # the reading of a minute ago stands
    with pytest.raises(Overloaded):
        await check(now + timedelta(seconds=60))
