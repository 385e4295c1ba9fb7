"""Dead letters are parked, listed, replayed to the queue they died in, or discarded (real broker)."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import aio_pika
import httpx
import pytest
from asgi_lifespan import LifespanManager
from cryptography.fernet import Fernet
from fastapi import FastAPI
from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import create_async_engine

from chassis import deadletters
from chassis.db import make_engine, make_sessionmaker, messaging_metadata
from chassis.runtime import ServiceRuntime
from chassis.settings import DEV_DEAD_LETTER_KEY, ServiceSettings
from chassis.web import install
from events import topology

pytestmark = pytest.mark.integration
ADMIN = {"Authorization": "Bearer dev-admin-key"}


async def _until(probe, accept, timeout=15.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await probe()
        if accept(value):
            return value
        assert loop.time() < deadline, f"timed out; last {value!r}"
        await asyncio.sleep(0.05)


@pytest.fixture
async def app(rabbit, tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path}/dl.db"
    engine = make_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(messaging_metadata.create_all)
        await conn.run_sync(deadletters.deadletter_metadata.create_all)
    await engine.dispose()
    settings = ServiceSettings(service="dltest", amqp_url=rabbit.url, database_url=url)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async with ServiceRuntime(settings, routers=[deadletters.build_router()]) as runtime:
            app.state.runtime = runtime
            yield

    application = FastAPI(lifespan=lifespan)
    install(application, "dltest")
    application.include_router(deadletters.build_api())
    async with LifespanManager(application):
        yield application


async def test_a_rejected_message_is_parked_then_replayed_to_its_queue(rabbit, app):
    connection = await aio_pika.connect(rabbit.url)
    channel = await connection.channel()
    name = f"test.dl.{uuid.uuid4().hex[:8]}"
    queue = await channel.declare_queue(name, durable=True, arguments=topology.queue_arguments(name))
    ids = [str(uuid.uuid4()) for _ in range(3)]
    for message_id in ids[:2]:
        body = json.dumps(
            {"specversion": "1.0", "id": message_id, "type": "oms.test.v1", "source": "t", "data": {}}
        )
        await channel.default_exchange.publish(
            aio_pika.Message(body.encode(), message_id=message_id), routing_key=name
        )
    garbage = b"\xff\x00 not json, not even UTF-8"
    await channel.default_exchange.publish(aio_pika.Message(garbage, message_id=ids[2]), routing_key=name)
    for _ in ids:  # a consumer gives up on them: the broker dead-letters them
        message = await _until(lambda: queue.get(no_ack=False, fail=False), lambda m: m is not None)
        await message.reject(requeue=False)

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        listed = await _until(
            lambda: client.get("/v1/dead-letters", headers=ADMIN),
            lambda r: {i["message_id"] for i in r.json()["items"]} >= set(ids),
        )
        mine = {i["message_id"]: i for i in listed.json()["items"] if i["message_id"] in ids}
        assert {i["queue"] for i in mine.values()} == {name}
        assert mine[ids[2]]["body_encoding"] == "base64", "a body that is not text is kept, as base64"
        assert {i["reason"] for i in mine.values()} == {"rejected"}

        replay, discard = mine[ids[0]]["id"], mine[ids[1]]["id"]
        assert (await client.post(f"/v1/dead-letters/{replay}/replay", headers=ADMIN)).status_code == 202
        assert (await client.post(f"/v1/dead-letters/{discard}/discard", headers=ADMIN)).status_code == 200
        assert (await client.post(f"/v1/dead-letters/{discard}/replay", headers=ADMIN)).status_code == 409
        assert (await client.post("/v1/dead-letters/nope/replay", headers=ADMIN)).status_code == 404
        ops = {"Authorization": "Bearer dev-ops-key"}
        assert (await client.post(f"/v1/dead-letters/{discard}/discard", headers=ops)).status_code == 403

        back = await _until(lambda: queue.get(no_ack=True, fail=False), lambda m: m is not None)
        assert json.loads(back.body)["id"] == ids[0], "the replayed message keeps its CloudEvents id"
        assert await queue.get(no_ack=True, fail=False) is None, "the discarded one stays parked"
        remaining = (await client.get("/v1/dead-letters", headers=ADMIN)).json()["items"]
        assert {i["message_id"] for i in remaining} & set(ids) == {ids[2]}
    await queue.delete(if_unused=False, if_empty=False)
    await connection.close()


PERSONAL = {
    "specversion": "1.0",
    "id": "to-be-set",
    "type": "oms.command.payments.capture_payment.v1",
    "source": "t",
    "data": {
        "order_id": "ord-1",
        "payment": {"method": "card", "token": "tok_visa_4242secret"},
        "customer": {"name": "Lin Mei", "email": "lin.mei@example.com", "phone": "+86 138 0000 0000"},
        "shipping_address": {
            "line1": "88 Century Avenue",
            "line2": "Floor 9",
            "postal_code": "200120",
            "city": "Shanghai",
            "country": "CN",
        },
        "note": "call lin.mei@example.com, token tok_mastercard_5555",
    },
}
SECRETS = (
    "tok_visa_4242secret",
    "4242secret",
    "lin.mei",
    "Lin Mei",
    "138 0000",
    "88 Century",
    "Floor 9",
    "200120",
    "5555",
)


def test_bodies_are_masked_by_key_and_by_pattern():
    masked, encoding = deadletters.mask_body(json.dumps(PERSONAL).encode())
    assert encoding == "utf-8" and not [s for s in SECRETS if s in masked], masked
    data = json.loads(masked)["data"]
    assert data["payment"]["token"] == "tok_***" and data["customer"]["email"] == "***"
    assert data["shipping_address"]["city"] == "Shanghai" and data["order_id"] == "ord-1"
    assert data["note"] == "call l***@example.com, token tok_***"

    broken = json.dumps(PERSONAL)[:-40].encode()  # malformed: not JSON any more
    masked, encoding = deadletters.mask_body(broken)
    assert encoding == "utf-8" and not [s for s in SECRETS if s in masked], masked
    assert '"order_id": "ord-1"' in masked

    binary = b"\xff\x00" + json.dumps(PERSONAL).encode()
    masked, encoding = deadletters.mask_body(binary)
    shown = base64.b64decode(masked)
    assert encoding == "base64" and not [s for s in SECRETS if s.encode() in shown], shown


async def test_a_parked_letter_is_masked_sealed_and_replayed_as_it_was(rabbit, app, tmp_path):
    connection = await aio_pika.connect(rabbit.url)
    channel = await connection.channel()
    name = f"test.dl.{uuid.uuid4().hex[:8]}"
    queue = await channel.declare_queue(name, durable=True, arguments=topology.queue_arguments(name))
    message_id = str(uuid.uuid4())
    original = json.dumps({**PERSONAL, "id": message_id}).encode()
    await channel.default_exchange.publish(
        aio_pika.Message(original, message_id=message_id), routing_key=name
    )
    message = await _until(lambda: queue.get(no_ack=False, fail=False), lambda m: m is not None)
    await message.reject(requeue=False)

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        listed = await _until(
            lambda: client.get("/v1/dead-letters", headers=ADMIN),
            lambda r: message_id in {i["message_id"] for i in r.json()["items"]},
        )
        [letter] = [i for i in listed.json()["items"] if i["message_id"] == message_id]
        assert not [s for s in SECRETS if s in json.dumps(letter)], letter
        assert json.loads(letter["body"])["data"]["payment"]["token"] == "tok_***"

        # in the database too: the clear columns are masked, the sealed one is not readable
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/dl.db")
        async with engine.connect() as conn:
            row = (
                await conn.execute(text("SELECT * FROM dead_letter WHERE message_id = :m"), {"m": message_id})
            ).one()
        await engine.dispose()
        assert not [s for s in SECRETS if s in " ".join(str(v) for v in row)], row
        assert row.sealed and Fernet(DEV_DEAD_LETTER_KEY).decrypt(row.sealed.encode()) == original

        assert (
            await client.post(f"/v1/dead-letters/{letter['id']}/replay", headers=ADMIN)
        ).status_code == 202
        back = await _until(lambda: queue.get(no_ack=True, fail=False), lambda m: m is not None)
        assert back.body == original, "the replay sends the original, not the masked copy"
    await queue.delete(if_unused=False, if_empty=False)
    await connection.close()


async def test_dead_letters_past_their_retention_are_purged(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path}/purge.db"
    engine = make_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(deadletters.deadletter_metadata.create_all)
    sessions = make_sessionmaker(engine)
    now = datetime.now(UTC)
    rows = [
        ("old-parked", "parked", 31),
        ("old-replayed", "replayed", 40),
        ("new-parked", "parked", 29),
        ("new-discarded", "discarded", 1),
    ]
    async with sessions.begin() as session:
        for letter_id, status, days in rows:
            await session.execute(
                insert(deadletters.dead_letter).values(
                    id=letter_id,
                    queue="q",
                    reason="rejected",
                    deliveries=1,
                    body="{}",
                    body_encoding="utf-8",
                    status=status,
                    dead_at=now - timedelta(days=days),
                )
            )
    try:
        assert await deadletters.purge(sessions, older_than=timedelta(days=30), batch=1) == 2
        async with sessions() as session:
            left = set((await session.scalars(select(deadletters.dead_letter.c.id))).all())
        assert left == {"new-parked", "new-discarded"}
    finally:
        await engine.dispose()
