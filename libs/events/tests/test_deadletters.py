"""Dead letters are parked, listed, replayed to the queue they died in, or discarded (real broker)."""

from __future__ import annotations

import asyncio
import json
import uuid
from contextlib import asynccontextmanager

import aio_pika
import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from events import deadletters, topology
from events.db import make_engine, messaging_metadata
from events.runtime import ServiceRuntime
from events.settings import ServiceSettings
from events.web import install

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
        body = json.dumps({"specversion": "1.0", "id": message_id, "type": "oms.test.v1", "source": "t", "data": {}})
        await channel.default_exchange.publish(aio_pika.Message(body.encode(), message_id=message_id), routing_key=name)
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
