"""The handlers on a real SQLite database, with recording channel adapters in place of SMTP; the
retention of personal data."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import event, func, select, update

from chassis.batch import Batcher
from chassis.broker import Permanent, Unavailable
from chassis.db import make_engine, make_sessionmaker, messaging_metadata, outbox_message
from events.envelope import Envelope, build
from events.notifications import RegisterRecipient
from events.orders import OrderStatusChanged
from events.payments import PaymentActionRequired, PaymentRefunded
from notifications import retention
from notifications.channels import Rejected, Transient
from notifications.db import Base, Notification, Preference, Recipient
from notifications.handlers import (
    handle_register_recipient,
    on_order_status_changed,
    on_payment_action_required,
    on_payment_refunded,
)
from notifications.service import DeliveryPending, RecipientNotRegistered

HAPPY = ["submitted", "confirmed", "paid", "picking", "shipped", "in_transit", "delivered"]


def register(
    order_id: str = "ord-1",
    *,
    locale: str = "zh-CN",
    phone: str | None = "+8613800000000",
    email: str = "lin@example.com",
    customer_id: str = "cust-42",
    time: datetime | None = None,
) -> Envelope[RegisterRecipient]:
    cmd = RegisterRecipient(
        order_id=order_id, customer_id=customer_id, name="Lin Mei", email=email, phone=phone, locale=locale
    )
    return Envelope[RegisterRecipient].model_validate(
        build(cmd, service="orders", subject=order_id, time=time)
    )


def status_changed(
    to: str, order_id: str = "ord-1", *, from_: str | None = None, reason: str | None = None
) -> Envelope[OrderStatusChanged]:
    event = OrderStatusChanged(
        order_id=order_id,
        customer_id="cust-42",
        from_status=from_,
        to_status=to,
        reason=reason,
        at=datetime.now(UTC),
    )
    return Envelope[OrderStatusChanged].model_validate(build(event, service="orders", subject=order_id))


def refunded(amount: str = "79.80", order_id: str = "ord-1") -> Envelope[PaymentRefunded]:
    event = PaymentRefunded(
        order_id=order_id,
        payment_id="pay-1",
        refund_id="ref-1",
        amount=Decimal(amount),
        refunded_total=Decimal(amount),
        currency="CNY",
    )
    return Envelope[PaymentRefunded].model_validate(build(event, service="payments", subject=order_id))


async def published(sessions) -> list[dict]:
    async with sessions() as session:
        rows = (await session.execute(select(outbox_message).order_by(outbox_message.c.seq))).mappings().all()
    return [{"key": r["routing_key"], **json.loads(r["body"])} for r in rows]


async def notifications(sessions) -> list[Notification]:
    async with sessions() as session:
        return list((await session.scalars(select(Notification).order_by(Notification.created_at))).all())


async def test_a_registered_customer_gets_one_email_per_status(sessions, channels, settings):
    await handle_register_recipient(register(), sessions)
    for status in HAPPY:
        await on_order_status_changed(status_changed(status), sessions, channels, settings)

    mails = channels["email"].sent
    assert len(mails) == len(HAPPY)
    assert all(m.address == "lin@example.com" and m.name == "Lin Mei" and "ord-1" in m.body for m in mails)
    assert all("订单" in m.subject and m.locale == "zh-CN" for m in mails)
    assert len({m.message_id for m in mails}) == len(HAPPY)
    assert not channels["sms"].sent and not channels["push"].sent, "e-mail only by default"

    rows = await notifications(sessions)
    assert [r.template for r in rows] == [f"order.{s}" for s in HAPPY]
    assert all(r.status == "sent" and r.sent_at and r.attempts == 1 and r.lease_until is None for r in rows)

    events = await published(sessions)
    assert [e["key"] for e in events] == ["notification.sent"] * len(HAPPY)
    assert events[0]["data"] == {
        "order_id": "ord-1",
        "channel": "email",
        "template": "order.submitted",
        "locale": "zh-CN",
    }
    assert events[0]["causationid"] and events[0]["correlationid"] == "ord-1"
    text = json.dumps(events, ensure_ascii=False)
    assert "lin@example.com" not in text and "Lin Mei" not in text and "13800000000" not in text


async def test_the_same_event_twice_sends_one_email(sessions, channels, settings):
    await handle_register_recipient(register(), sessions)
    event = status_changed("shipped")
    await on_order_status_changed(event, sessions, channels, settings)
    await on_order_status_changed(event, sessions, channels, settings)
    assert len(channels["email"].sent) == 1
    assert len(await notifications(sessions)) == 1
    assert len(await published(sessions)) == 1


async def test_an_event_before_its_recipient_is_retried_not_dead_lettered(sessions, channels, settings):
    event = status_changed("submitted")
    with pytest.raises(RecipientNotRegistered) as raised:
        await on_order_status_changed(event, sessions, channels, settings)
    assert not isinstance(raised.value, Permanent), "it must go back to the queue with back-off"
    assert await notifications(sessions) == [] and await published(sessions) == []

    await handle_register_recipient(register(), sessions)
    await on_order_status_changed(event, sessions, channels, settings)  # the redelivery
    assert [m.subject for m in channels["email"].sent] == ["我们已收到您的订单 ord-1"]


async def test_a_refund_before_its_recipient_is_retried_too(sessions, channels, settings):
    with pytest.raises(RecipientNotRegistered):
        await on_payment_refunded(refunded(), sessions, channels, settings)


async def test_registering_twice_is_harmless_and_newer_details_win(sessions):
    now = datetime.now(UTC)
    first = register(email="old@example.com", time=now)
    await handle_register_recipient(first, sessions)
    await handle_register_recipient(first, sessions)
    await handle_register_recipient(
        register(email="new@example.com", locale="en", time=now + timedelta(seconds=1)), sessions
    )
    await handle_register_recipient(
        register(email="stale@example.com", time=now - timedelta(seconds=1)), sessions
    )
    async with sessions() as session:
        rows = (await session.scalars(select(Recipient))).all()
    assert [(r.order_id, r.email, r.locale) for r in rows] == [("ord-1", "new@example.com", "en")]


async def test_preferences_choose_the_channels(sessions, channels, settings):
    async with sessions.begin() as session:
        session.add(
            Preference(customer_id="cust-42", email=False, sms=True, push=True, updated_at=datetime.now(UTC))
        )
    await handle_register_recipient(register(), sessions)
    await on_order_status_changed(status_changed("paid"), sessions, channels, settings)

    assert channels["email"].sent == []
    assert [m.address for m in channels["sms"].sent] == ["+8613800000000"]
    assert [m.address for m in channels["push"].sent] == ["cust-42"]
    events = await published(sessions)
    assert sorted(e["data"]["channel"] for e in events) == ["push", "sms"]


async def test_a_customer_who_turned_everything_off_gets_nothing(sessions, channels, settings):
    async with sessions.begin() as session:
        session.add(
            Preference(
                customer_id="cust-42", email=False, sms=False, push=False, updated_at=datetime.now(UTC)
            )
        )
    await handle_register_recipient(register(), sessions)
    await on_order_status_changed(status_changed("paid"), sessions, channels, settings)
    assert not any(c.sent for c in channels.values())
    assert await notifications(sessions) == [] and await published(sessions) == []


async def test_sms_without_a_phone_number_fails_visibly(sessions, channels, settings):
    async with sessions.begin() as session:
        session.add(
            Preference(customer_id="cust-42", email=True, sms=True, push=False, updated_at=datetime.now(UTC))
        )
    await handle_register_recipient(register(phone=None), sessions)
    await on_order_status_changed(status_changed("paid"), sessions, channels, settings)
    assert len(channels["email"].sent) == 1 and channels["sms"].sent == []
    events = {e["data"]["channel"]: e for e in await published(sessions)}
    assert events["email"]["key"] == "notification.sent"
    assert events["sms"]["key"] == "notification.failed" and events["sms"]["data"]["reason"] == "no_address"


async def test_a_refund_tells_the_amount(sessions, channels, settings):
    await handle_register_recipient(register(locale="en"), sessions)
    await on_payment_refunded(refunded("79.80"), sessions, channels, settings)
    [mail] = channels["email"].sent
    assert mail.subject == "We refunded CNY 79.80 for your order ord-1"
    assert "CNY 79.80" in mail.body
    [event] = await published(sessions)
    assert event["data"]["template"] == "payment.refunded"


async def test_please_pay_sends_the_link_once(sessions, channels, settings):
    await handle_register_recipient(register(locale="en"), sessions)
    event = PaymentActionRequired(
        order_id="ord-1",
        payment_id="pay-1",
        method="alipay",
        action_type="qr_code",
        url="https://qr.alipay.com/bax01",
        expires_at=datetime(2026, 12, 2, 10, 15, tzinfo=UTC),
        amount=Decimal("79.80"),
        currency="CNY",
    )
    msg = Envelope[PaymentActionRequired].model_validate(build(event, service="payments", subject="ord-1"))
    await on_payment_action_required(msg, sessions, channels, settings)
    await on_payment_action_required(msg, sessions, channels, settings)  # redelivered
    [mail] = channels["email"].sent
    assert mail.subject == "Please pay CNY 79.80 for your order ord-1"
    assert "https://qr.alipay.com/bax01" in mail.body and "2026-12-02 10:15:00 UTC" in mail.body


async def test_a_cancellation_says_why(sessions, channels, settings):
    await handle_register_recipient(register(locale="en"), sessions)
    await on_order_status_changed(
        status_changed("cancelled", from_="paid", reason="shipment_failed"), sessions, channels, settings
    )
    [mail] = channels["email"].sent
    assert "no carrier can deliver to the shipping address" in mail.body


async def test_a_channel_that_is_down_keeps_the_notification_and_retries_the_event(
    sessions, channels, settings
):
    await handle_register_recipient(register(), sessions)
    channels["email"].fail_with = [
        Transient("smtp_451"),
        ConnectionRefusedError("down"),
        Unavailable("smtp", "ConnectionRefusedError"),
    ]
    event = status_changed("shipped")
    with pytest.raises(DeliveryPending, match="smtp_451"):
        await on_order_status_changed(event, sessions, channels, settings)
    with pytest.raises(DeliveryPending, match="ConnectionRefusedError"):
        await on_order_status_changed(event, sessions, channels, settings)
    with pytest.raises(Unavailable, match="smtp"):  # waited out by the consume policy, not counted
        await on_order_status_changed(event, sessions, channels, settings)
    [row] = await notifications(sessions)
    assert (row.status, row.attempts, row.lease_until) == ("pending", 3, None)
    assert row.last_error == "unavailable: ConnectionRefusedError"
    assert await published(sessions) == []

    await on_order_status_changed(event, sessions, channels, settings)  # the server is back
    assert len(channels["email"].sent) == 1
    [row] = await notifications(sessions)
    assert (row.status, row.attempts) == ("sent", 4)
    assert [e["key"] for e in await published(sessions)] == ["notification.sent"]


async def test_an_address_the_server_refuses_fails_once_and_is_not_retried(sessions, channels, settings):
    await handle_register_recipient(register(), sessions)
    channels["email"].fail_with = [Rejected("smtp_550")]
    event = status_changed("shipped")
    await on_order_status_changed(event, sessions, channels, settings)
    await on_order_status_changed(event, sessions, channels, settings)
    [row] = await notifications(sessions)
    assert (row.status, row.last_error) == ("failed", "smtp_550")
    [failed] = await published(sessions)
    assert failed["key"] == "notification.failed"
    assert failed["data"] == {
        "order_id": "ord-1",
        "channel": "email",
        "template": "order.shipped",
        "reason": "smtp_550",
    }


async def test_a_notification_being_sent_elsewhere_is_not_sent_twice(sessions, channels, settings):
    """Another delivery of the event holds the lease: wait for it (retry), do not send in parallel."""
    await handle_register_recipient(register(), sessions)
    event = status_changed("shipped")
    channels["email"].fail_with = [Transient("smtp_421")]
    with pytest.raises(DeliveryPending):
        await on_order_status_changed(event, sessions, channels, settings)
    async with sessions.begin() as session:
        await session.execute(
            update(Notification).values(lease_until=datetime.now(UTC) + timedelta(seconds=60))
        )
    with pytest.raises(DeliveryPending, match="another delivery"):
        await on_order_status_changed(event, sessions, channels, settings)
    assert channels["email"].sent == []


async def test_after_a_crash_between_recording_and_marking_the_redelivery_sends_once(
    sessions, channels, settings
):
    """The process died while sending: the row is pending with an expired lease. The redelivered event
    (already in the inbox) sends it, with the same Message-ID, and marks it."""
    await handle_register_recipient(register(), sessions)
    event = status_changed("delivered")
    channels["email"].fail_with = [Transient("smtp_421")]
    with pytest.raises(DeliveryPending):
        await on_order_status_changed(event, sessions, channels, settings)
    async with sessions.begin() as session:
        await session.execute(
            update(Notification).values(lease_until=datetime.now(UTC) - timedelta(seconds=1))
        )
    [before] = await notifications(sessions)

    await on_order_status_changed(event, sessions, channels, settings)
    await on_order_status_changed(event, sessions, channels, settings)
    [mail] = channels["email"].sent
    assert mail.message_id == before.message_id
    assert [e["key"] for e in await published(sessions)] == ["notification.sent"]


async def test_past_the_retention_an_order_is_forgotten_and_a_late_event_tells_nobody(
    sessions, channels, settings
):
    for order_id in ("ord-old", "ord-new"):
        await handle_register_recipient(register(order_id), sessions)
        await on_order_status_changed(status_changed("confirmed", order_id), sessions, channels, settings)
    long_ago = datetime.now(UTC) - timedelta(days=200)
    async with sessions.begin() as session:  # as if ord-old had been placed 200 days ago
        await session.execute(
            update(Recipient).where(Recipient.order_id == "ord-old").values(updated_at=long_ago)
        )
        await session.execute(
            update(Notification).where(Notification.order_id == "ord-old").values(created_at=long_ago)
        )

    assert await retention.purge(sessions, older_than=timedelta(days=180), batch=1) == (1, 1)
    assert await retention.purge(sessions, older_than=timedelta(days=180)) == (0, 0)  # done once
    assert [n.order_id for n in await notifications(sessions)] == ["ord-new"]
    async with sessions() as session:
        old, new = await session.get(Recipient, "ord-old"), await session.get(Recipient, "ord-new")
    assert (old.name, old.email, old.phone) == ("", "", None) and old.forgotten_at is not None
    assert (new.email, new.forgotten_at) == ("lin@example.com", None)

    sent = len(channels["email"].sent)
    await on_order_status_changed(
        status_changed("delivered", "ord-old"), sessions, channels, settings
    )  # acked
    assert len(channels["email"].sent) == sent and [n.order_id for n in await notifications(sessions)] == [
        "ord-new"
    ]


def scanned(
    status: str, *, undelivered: bool = False, tracking: str = "SF123456789012", replaces: str | None = None
) -> Envelope:
    from events.shipping import ShipmentUpdated

    event = ShipmentUpdated(
        order_id="ord-1",
        shipment_id="shp-1",
        carrier="sf-express",
        tracking_number=tracking,
        status=status,
        at=datetime.now(UTC),
        estimated_delivery=datetime(2026, 11, 30).date(),
        tracking_url=f"https://track.example/{tracking}",
        undelivered=undelivered,
        replaces=replaces,
    )
    return Envelope[ShipmentUpdated].model_validate(build(event, service="shipping", subject="ord-1"))


async def test_the_shipped_email_and_sms_carry_carrier_tracking_number_link_and_estimate(
    sessions, channels, settings
):
    from notifications.handlers import on_shipment_updated

    await handle_register_recipient(register(locale="en"), sessions)
    async with sessions.begin() as session:
        session.add(
            Preference(customer_id="cust-42", email=True, sms=True, push=False, updated_at=datetime.now(UTC))
        )
    await on_shipment_updated(scanned("in_transit"), sessions, channels, settings)  # nothing to tell
    await on_shipment_updated(scanned("picked_up"), sessions, channels, settings)
    [mail], [sms] = channels["email"].sent, channels["sms"].sent
    for message in (mail, sms):
        for part in ("sf-express", "SF123456789012", "https://track.example/SF123456789012", "2026-11-30"):
            assert part in message.body, (part, message.body)
    assert mail.subject == "Your parcel SF123456789012 is on its way"


async def test_a_failed_attempt_and_a_parcel_that_will_not_arrive_are_told(sessions, channels, settings):
    from notifications.handlers import on_shipment_updated

    await handle_register_recipient(register(locale="en"), sessions)
    await on_shipment_updated(scanned("exception"), sessions, channels, settings)
    await on_shipment_updated(
        scanned("returned"), sessions, channels, settings
    )  # a customer's return: the order tells
    await on_shipment_updated(scanned("lost", undelivered=True), sessions, channels, settings)
    assert [m.subject for m in channels["email"].sent] == [
        "We could not deliver your parcel SF123456789012 today",
        "Your parcel SF123456789012 was lost",
    ]


async def test_a_lost_parcel_sent_again_is_told_as_sent_again_with_its_new_tracking_number(
    sessions, channels, settings
):
    from notifications.handlers import on_shipment_updated

    await handle_register_recipient(register(locale="en"), sessions)
    async with sessions.begin() as session:
        session.add(
            Preference(customer_id="cust-42", email=True, sms=True, push=False, updated_at=datetime.now(UTC))
        )
    await on_shipment_updated(scanned("lost", undelivered=True), sessions, channels, settings)
    await on_shipment_updated(
        scanned("picked_up", tracking="SF999", replaces="SF123456789012"), sessions, channels, settings
    )
    lost, again = channels["email"].sent
    assert "send what it held again" in lost.body and "refund" in lost.body, (
        "the customer is told both may come"
    )
    assert again.subject == "We sent your lost parcel SF123456789012 again: SF999"
    sms = channels["sms"].sent[-1]
    for part in ("SF123456789012", "SF999", "sf-express", "https://track.example/SF999", "2026-11-30"):
        assert part in again.body and part in sms.body, part


async def test_a_batch_of_events_is_recorded_in_one_commit_sent_after_it_and_marked_in_one_more(
    tmp_path, settings, channels
):
    """The batched path: every e-mail reaches its server only once its record is committed (a crash
    before the commit sends nothing; after it, the redelivered event finds the pending row), and
    the marks of all the batch's e-mails commit together."""
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path}/batched.db")
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
        await conn.run_sync(messaging_metadata.create_all)
    sessions = make_sessionmaker(engine)
    commits: list[int] = []
    event.listen(engine.sync_engine, "commit", lambda conn: commits.append(1))
    orders = [f"ord-{n}" for n in range(8)]
    for order_id in orders:
        await handle_register_recipient(register(order_id, phone=None), sessions)

    committed_at_send: list[int] = []
    email = channels["email"]
    send = email.send

    async def send_after_commit(message):
        async with sessions() as session:  # a connection of its own: what is committed
            committed_at_send.append(
                await session.scalar(
                    select(func.count())
                    .select_from(Notification)
                    .where(Notification.message_id == message.message_id)
                )
            )
        return await send(message)

    email.send = send_after_commit
    batcher = Batcher(sessions, size=32, linger_seconds=0.01)
    before = len(commits)
    events = [status_changed("paid", order_id) for order_id in orders]
    await asyncio.gather(
        *(batcher.run(lambda e=e: on_order_status_changed(e, sessions, channels, settings)) for e in events)
    )
    assert batcher.batches == 1 and len(email.sent) == 8
    assert committed_at_send == [1] * 8, "each e-mail's record was committed before it was sent"
    assert len(commits) - before == 2, "one commit records the batch, one marks what was sent"
    async with sessions() as session:
        statuses = (await session.scalars(select(Notification.status))).all()
    assert statuses == ["sent"] * 8
    assert [e["key"] for e in await published(sessions)].count("notification.sent") == 8
    await engine.dispose()
