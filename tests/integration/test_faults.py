"""Nothing lost, nothing twice, under real faults (issue 4): each scenario places a stream of
orders while something breaks, then waits for every order to be final and runs the consistency
check (`make verify`). Each prints its score: placed, final, lost (must be 0), duplicated (0).

The broker scenarios need a broker the suite started itself (not one given by AMQP_URL).
"""

from __future__ import annotations

import asyncio

import aio_pika
import httpx
import pytest
from integration.faults import SCORES, Duplicator, Stream, dead_letters, poison_bodies, settle
from integration.helpers import eventually, new_sku, order_body, payment, place, receive, wait_settled

from events import topology
from omstools.verify import verify

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("simulated_carrier")]

ORDERS_PER_SCENARIO = 150


@pytest.fixture
async def sku(inventory) -> str:
    sku = new_sku()
    for warehouse in ("SH", "BJ"):
        await receive(inventory, warehouse, sku, 5000)
    return sku


def urls(oms) -> dict[str, str]:
    return {s: oms.url(s) for s in ("orders", "inventory", "payments", "shipping")}


async def finish(oms, stream: Stream, scenario: str) -> None:
    """Every order placed, none lost, none twice, and none cancelled: our own faults are never the
    customer's loss (the stream's sandbox values all succeed). `make verify` clean, the payment
    provider's ledger included."""
    score = await settle(stream)
    SCORES.append(score.line(scenario))
    assert score.placed == stream.count, f"not every order was accepted: {stream.given_up}"
    assert score.lost == 0 and score.duplicated == 0, score
    assert not score.cancelled, f"orders were cancelled by a fault of ours: {score}"
    report = await verify(urls(oms), settle=60)
    assert report.ok, report.render()


def needs_own_broker(rabbit):
    if rabbit.node is None:
        pytest.skip("needs a broker the test suite started (AMQP_URL names an outside one)")


async def test_kill_9_of_each_service_in_turn_loses_nothing(oms, sku):
    stream = Stream(oms.url("orders"), sku, ORDERS_PER_SCENARIO, rate=30)
    placing = asyncio.create_task(stream.run())
    for svc in ("inventory", "payments", "shipping", "notifications", "orders"):
        await asyncio.sleep(0.6)  # let some orders be in that service's hands
        oms.kill(svc)
        await asyncio.to_thread(oms.start, svc)
        await asyncio.to_thread(oms.wait_ready, [svc], 120)
    await placing
    await finish(oms, stream, "kill -9 each service")


async def test_services_and_the_broker_blinking_under_a_stream_cancel_no_order(oms, rabbit, sku):
    """150 orders at 25/s while payments, inventory and shipping are each killed (kill -9) 1.5 s
    apart and started again, and the broker's application is stopped for 3 s: all delivered."""
    needs_own_broker(rabbit)
    stream = Stream(oms.url("orders"), sku, ORDERS_PER_SCENARIO, rate=25)
    placing = asyncio.create_task(stream.run())
    for svc in ("payments", "inventory", "shipping"):
        await asyncio.sleep(1.5)
        oms.kill(svc)
        oms.start(svc)
    await asyncio.sleep(1.5)
    await asyncio.to_thread(rabbit.node.ctl, "stop_app")
    await asyncio.sleep(3.0)  # the outage itself, not a wait for a condition
    await asyncio.to_thread(rabbit.node.ctl, "start_app")
    await placing
    await asyncio.to_thread(oms.wait_ready, None, 120)
    await finish(oms, stream, "services kill -9 and broker app stopped 3 s")


async def test_payments_killed_between_the_charge_and_its_commit_charges_once(
    oms, sku, orders, payments, tmp_path
):
    """The provider charged, payments died before it wrote the answer: when it is back, the
    redelivered capture asks the provider by the attempt's key and records the charge. One charge,
    the order paid (never a charge nobody accounts for)."""
    marker = tmp_path / "crash-after-charge"
    await asyncio.to_thread(oms.restart, "payments", {"PAYMENTS_FAULT_CRASH_AFTER_CHARGE_FILE": str(marker)})
    try:
        marker.touch()
        created = await place(orders, order_body(items=[{"sku": sku, "quantity": 1, "unit_price": "7.00"}]))
        await eventually(
            lambda: asyncio.to_thread(oms.running, "payments"),
            lambda alive: not alive,
            timeout=60,
            what="payments to die between the charge and its commit",
        )
        assert not marker.exists()
        await asyncio.to_thread(oms.start, "payments")
        await asyncio.to_thread(oms.wait_ready, ["payments"])
        order = await wait_settled(orders, created["id"], timeout=60)
        assert order["status"] == "delivered" and order["payment"]["status"] == "captured", order
        async with httpx.AsyncClient(base_url=oms.standin_url("stripe")) as processor:
            books = (await processor.get("/_standin/ledger")).json()  # the card processor's own
        charged = [i for i in books["payment_intents"] if i["oms_key"] == f"capture:{created['id']}"]
        assert [i["status"] for i in charged] == ["succeeded"], "charged once"
        paid = await payment(payments, created["id"])
        assert (paid["status"], paid["provider"], paid["provider_ref"]) == (
            "captured",
            "stripe",
            charged[0]["id"],
        )
        SCORES.append(
            f"payments killed between charge and commit: placed=1 delivered=1 cancelled=0 lost=0 twice=0 "
            f"charges={len(charged)}"
        )
    finally:
        await asyncio.to_thread(oms.restart, "payments", {"PAYMENTS_FAULT_CRASH_AFTER_CHARGE_FILE": ""})
    report = await verify(urls(oms), settle=60)
    assert report.ok, report.render()


@pytest.mark.parametrize("how", ["stop", "kill -9"])
async def test_broker_restart_mid_stream_loses_nothing(oms, rabbit, sku, how):
    needs_own_broker(rabbit)
    stream = Stream(oms.url("orders"), sku, ORDERS_PER_SCENARIO, rate=30)
    placing = asyncio.create_task(stream.run())
    await asyncio.sleep(1.5)
    await asyncio.to_thread(rabbit.node.stop if how == "stop" else rabbit.node.kill)
    await asyncio.sleep(1.0)  # the API keeps taking orders meanwhile (outbox)
    await asyncio.to_thread(rabbit.node.start)
    await placing
    await asyncio.to_thread(oms.wait_ready, None, 120)
    await finish(oms, stream, f"broker {how}")


async def test_orders_are_accepted_while_the_broker_is_down_and_flow_when_it_is_back(
    oms, rabbit, sku, orders
):
    needs_own_broker(rabbit)
    await asyncio.to_thread(rabbit.node.stop)
    try:
        ready = await orders.get("/readyz")
        assert ready.status_code == 503, "readiness must say the broker is gone"
        stream = Stream(oms.url("orders"), sku, 60, rate=60)
        await stream.run(give_up_after=30)
        assert stream.retries == 0, "every POST answered 202 straight away, from the outbox"
    finally:
        await asyncio.to_thread(rabbit.node.start)
    await asyncio.to_thread(oms.wait_ready, None, 120)
    await finish(oms, stream, "broker down while taking orders")


async def test_every_message_published_twice_changes_nothing(oms, rabbit, sku):
    duplicator = Duplicator(rabbit.url)
    await duplicator.start()
    try:
        stream = Stream(oms.url("orders"), sku, ORDERS_PER_SCENARIO, rate=30)
        await stream.run()
        await finish(oms, stream, "every message twice")
        assert duplicator.copied >= ORDERS_PER_SCENARIO * 5, "the duplicator did copy the traffic"
    finally:
        await duplicator.stop()


async def test_a_poison_message_on_each_queue_is_dead_lettered_and_the_rest_flows(oms, rabbit, sku):
    connection = await aio_pika.connect(rabbit.url)
    channel = await connection.channel(publisher_confirms=True)
    sent: dict[str, set[str]] = {}
    for spec in topology.QUEUES:
        for kind in ("not-json", "not-an-event", "bad-data"):
            if kind == "bad-data" and spec.name == "orders.place_order":
                continue  # a bad order command is answered with order.rejected, not dead-lettered
            message_id = f"poison-{kind}-{spec.name}-{sku}"
            sent.setdefault(spec.name, set()).add(message_id)
            await channel.default_exchange.publish(
                aio_pika.Message(
                    poison_bodies(message_id)[kind],
                    message_id=message_id,
                    content_type="application/cloudevents+json",
                ),
                routing_key=spec.name,
            )
    await connection.close()

    stream = Stream(oms.url("orders"), sku, 60, rate=30)
    await stream.run()
    await finish(oms, stream, "poison messages")

    def parked(letters: list[dict]) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for letter in letters:
            found.setdefault(letter["queue"], set()).add(letter["message_id"])
        return found

    await eventually(
        lambda: dead_letters(oms.url("orders")),
        lambda letters: all(ids <= parked(letters).get(queue, set()) for queue, ids in sent.items()),
        timeout=60,
        what="every poison message parked with the queue it died in",
    )


async def test_failed_database_commits_in_handlers_are_retried_and_applied_once(oms, sku):
    faulty = {"OMS_FAULT_FAIL_COMMIT_RATE": "0.3"}
    for svc in ("inventory", "payments", "shipping"):
        await asyncio.to_thread(oms.restart, svc, faulty)
    try:
        stream = Stream(oms.url("orders"), sku, ORDERS_PER_SCENARIO, rate=30)
        await stream.run()
        await finish(oms, stream, "failed commits in handlers")
    finally:
        for svc in ("inventory", "payments", "shipping"):
            await asyncio.to_thread(oms.restart, svc, {"OMS_FAULT_FAIL_COMMIT_RATE": "0"})


async def test_connections_dropped_mid_handler_apply_each_effect_once(oms, rabbit, sku):
    needs_own_broker(rabbit)
    stream = Stream(oms.url("orders"), sku, ORDERS_PER_SCENARIO, rate=30)
    placing = asyncio.create_task(stream.run())
    for _ in range(3):
        await asyncio.sleep(1.0)
        await asyncio.to_thread(rabbit.node.ctl, "close_all_connections", "fault test")
    await placing
    await asyncio.to_thread(oms.wait_ready, None, 120)
    await finish(oms, stream, "connections dropped")
