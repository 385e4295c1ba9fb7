"""What notifications does: who to tell (``register``) and what to tell them (``notify``: an
event's message, recorded, then sent by the ``Dispatcher`` once recorded). The subscribers
(``notifications.handlers``) decide which message an event is and call these.

A notification is sent only after its intent is recorded. The events that arrive together are
handled in one batch transaction (chassis.batch) that claims each in the inbox and writes a
``pending`` row per channel the customer wants (unique per event and channel), leased for sending.
Only after that commit (``after_commit``) does the :class:`Dispatcher` send the rows of every event
that is ready, and ONE transaction then marks them ``sent`` (or ``failed``, or pending again) and
stages ``notification.sent`` / ``notification.failed`` in the outbox; each event is acked after
its rows are marked.

The honest guarantee is at least once: a crash after the SMTP server took an e-mail and before its
row is marked sends it again when the event is redelivered (once: then the row is marked). Every
attempt carries the same Message-ID, derived from the event id, so mail clients show one message.

Errors follow the shared consume policy: a channel whose server cannot be reached raises
``Unavailable``, and the event waits for it, run again in place for as long as the outage lasts; a
recipient not registered yet (the command and the event may arrive in either order), a channel
that answered "later", or a row another delivery is sending raise an ordinary exception, and the
event is retried with back-off; a redelivered event finishes whatever of it is still pending.
"""

from __future__ import annotations

import asyncio
import weakref
from datetime import UTC, datetime, timedelta
from email.utils import parseaddr
from types import SimpleNamespace
from typing import Any
from uuid import uuid4

from sqlalchemy import bindparam, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chassis import inbox, outbox
from chassis.batch import Rounds, after_commit
from chassis.broker import Unavailable
from chassis.db import InsertIfAbsent, held_first, table
from chassis.logs import get_logger
from events import topology
from events.envelope import Envelope
from events.notifications import NotificationFailed, NotificationSent, RegisterRecipient
from notifications.channels import ChannelAdapter, Outgoing, Rejected, Transient
from notifications.config import Settings
from notifications.db import Notification, Preference, Recipient
from notifications.domain import (
    DEFAULT_CHANNELS,
    NotificationStatus,
    address_for,
    enabled_channels,
    mask_address,
    mask_email,
    message_id,
    resolve_locale,
)
from notifications.templates import render

SERVICE = "notifications"
REGISTER = topology.command_queue("notifications.register_recipient")
STATUS_CHANGED = topology.event_queue(SERVICE, "order.status_changed")
REFUNDED = topology.event_queue(SERVICE, "payment.refunded")
SCANNED = topology.event_queue(SERVICE, "shipment.updated")
PLEASE_PAY = topology.event_queue(SERVICE, "payment.action_required")
# A carrier's scan the customer hears of: their parcel left, an attempt failed, it will not arrive
# (came back: refunded; lost: sent again or refunded, told by the parcel sent instead or the refund).
PARCEL_TEMPLATES = {
    "picked_up": "parcel.shipped",
    "exception": "parcel.exception",
    "returned": "parcel.not_delivered",
    "lost": "parcel.lost",
}
SENT_AGAIN_TEMPLATE = "parcel.sent_again"  # picked up, sent instead of a lost parcel

log = get_logger(__name__)


class RecipientNotRegistered(Exception):
    """The event came before the order's ``register_recipient`` command: retried until it is there."""


class DeliveryPending(Exception):
    """Some notification of the event is not sent yet: the event is retried and sends what is left."""


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


async def register(msg: Envelope[RegisterRecipient], sessions: async_sessionmaker) -> None:
    """Remember who the order's customer is, how to reach them and in which language; a later
    registration (by its time) replaces an earlier one, an earlier one arriving late changes nothing."""
    cmd = msg.data
    now = datetime.now(UTC)
    at = _aware(msg.time)
    async with sessions.begin() as session:
        if not await inbox.claim(session, msg.id, REGISTER):
            return
        known = await session.scalar(_REGISTERED_AT, {"order_id": cmd.order_id})
        values = {
            "customer_id": cmd.customer_id,
            "name": cmd.name,
            "email": cmd.email,
            "phone": cmd.phone,
            "locale": cmd.locale,
            "registered_at": at,
            "updated_at": now,
        }
        if known is None:
            await session.execute(_INSERT_RECIPIENT, {"order_id": cmd.order_id, **values})
        elif at >= known:  # told again who it is: remembered again
            await session.execute(
                _UPDATE_RECIPIENT, {"key_order_id": cmd.order_id, **values, "forgotten_at": None}
            )
    log.info("recipient.registered", email=mask_email(cmd.email), locale=resolve_locale(cmd.locale))


async def notify(
    sessions: async_sessionmaker,
    channels: dict[str, ChannelAdapter],
    settings: Settings,
    msg: Envelope[Any],
    consumer: str,
    order_id: str,
    template: str,
    **params: Any,
) -> None:
    """Tell the order's customer ``template`` (with ``params``) for the event ``msg``: recorded in
    the batch's transaction, sent once that committed (``after_commit``)."""
    leased = await _record(sessions, msg, consumer, order_id, template, settings, **params)
    await after_commit(lambda: _deliver(sessions, channels, settings, msg, leased))


async def _record(
    sessions: async_sessionmaker,
    msg: Envelope[Any],
    consumer: str,
    order_id: str,
    template: str,
    settings: Settings,
    **params: Any,
) -> list[tuple[SimpleNamespace, str | None]] | None:
    """Write a ``pending`` notification per channel the customer wants, once per event, already
    leased for sending (one transaction less than leasing them afterwards). Returns the leased
    rows, or None when the event was recorded before."""
    leased: list[tuple[SimpleNamespace, str | None]] = []
    async with sessions.begin() as session:
        if not await inbox.claim(session, msg.id, consumer):
            return None  # recorded before: _deliver finishes whatever is still pending
        recipient = (await session.execute(_RECIPIENT, {"order_id": order_id})).first()
        if recipient is None:
            raise RecipientNotRegistered(f"no recipient registered for order {order_id} yet")
        if recipient.forgotten_at is not None:  # past the retention: nobody to tell any more
            log.info("notification.recipient_forgotten", template=template)
            return []
        if recipient.has_preference:
            wanted = enabled_channels(email=recipient.by_email, sms=recipient.by_sms, push=recipient.by_push)
        else:
            wanted = sorted(DEFAULT_CHANNELS)
        rendered = render(template, recipient.locale, order_id=order_id, name=recipient.name, **params)
        domain = parseaddr(settings.mail_from)[1].rpartition("@")[2]
        now = datetime.now(UTC)
        lease_until = now + timedelta(seconds=settings.send_lease_seconds)
        rows: list[dict[str, Any]] = []
        for channel in wanted:
            address = address_for(
                channel, email=recipient.email, phone=recipient.phone, customer_id=recipient.customer_id
            )
            rows.append(
                {
                    "id": str(uuid4()),
                    "source_event_id": msg.id,
                    "source_type": msg.type,
                    "order_id": order_id,
                    "customer_id": recipient.customer_id,
                    "channel": channel.value,
                    "template": template,
                    "locale": rendered.locale,
                    "address": address,
                    "subject": rendered.subject,
                    "body": rendered.body,
                    "message_id": message_id(msg.id, channel, domain),
                    "status": NotificationStatus.PENDING if address else NotificationStatus.FAILED,
                    "attempts": 1 if address else 0,
                    "lease_until": lease_until if address else None,
                    "last_error": None if address else "no_address",
                    "provider_ref": None,
                    "created_at": now,
                    "updated_at": now,
                    "sent_at": None,
                }
            )
        if rows:
            # The rows of an event are written in the transaction that claims it, where none exist
            # yet; the unique key (event, channel) refuses a second row all the same.
            await session.execute(_INSERT_NOTIFICATION, rows)
        for values in rows:
            row = SimpleNamespace(**values)  # what _send and the outcome read
            if row.address:
                leased.append((row, recipient.name))
            else:
                await _stage_outcome(session, msg, row)
    log.info("notification.recorded", template=template, channels=[c.value for c in wanted])
    return leased


# Prebuilt Core statements: see docs/operations.md, "Prebuilt statements on the message paths".
_recipient, _preference, _notification = table(Recipient), table(Preference), table(Notification)
_REGISTERED_AT = select(_recipient.c.registered_at).where(_recipient.c.order_id == bindparam("order_id"))
_INSERT_RECIPIENT = insert(_recipient)
_UPDATE_RECIPIENT = update(_recipient).where(_recipient.c.order_id == bindparam("key_order_id"))
_RECIPIENT_NAME = select(_recipient.c.name).where(_recipient.c.order_id == bindparam("order_id"))
_PENDING_OF_EVENT = (
    select(_notification)
    .where(
        _notification.c.source_event_id == bindparam("event_id"),
        _notification.c.status == NotificationStatus.PENDING,
    )
    .order_by(_notification.c.channel)
)
_TAKE_LEASE = (
    update(_notification)
    .where(
        _notification.c.id == bindparam("row_id"),
        _notification.c.status == NotificationStatus.PENDING,
        or_(_notification.c.lease_until.is_(None), _notification.c.lease_until <= bindparam("now")),
    )
    .values(
        lease_until=bindparam("until"), attempts=_notification.c.attempts + 1, updated_at=bindparam("now")
    )
)
_RECIPIENT = (
    select(
        _recipient.c.customer_id,
        _recipient.c.name,
        _recipient.c.email,
        _recipient.c.phone,
        _recipient.c.locale,
        _preference.c.customer_id.is_not(None).label("has_preference"),
        _preference.c.email.label("by_email"),
        _preference.c.sms.label("by_sms"),
        _preference.c.push.label("by_push"),
        _recipient.c.forgotten_at,
    )
    .select_from(_recipient.outerjoin(_preference, _preference.c.customer_id == _recipient.c.customer_id))
    .where(_recipient.c.order_id == bindparam("order_id"))
)
_INSERT_NOTIFICATION = insert(_notification)
_MARK = (
    update(_notification)
    .where(_notification.c.id == bindparam("row_id"), _notification.c.status == NotificationStatus.PENDING)
    .values(
        status=bindparam("new_status"),
        provider_ref=bindparam("ref"),
        last_error=bindparam("error"),
        lease_until=None,
        updated_at=bindparam("now"),
        sent_at=bindparam("sent"),
    )
)


async def _deliver(
    sessions: async_sessionmaker,
    channels: dict[str, ChannelAdapter],
    settings: Settings,
    msg: Envelope[Any],
    leased: list[tuple[SimpleNamespace, str | None]] | None = None,
) -> None:
    """Send ``leased``, or else every pending notification of ``msg`` that no other delivery is
    sending right now (a redelivered event: what its first delivery left pending)."""
    busy = 0
    if leased is None:
        leased, busy = await _lease_pending(sessions, settings, msg)
    if leased or busy:
        await dispatcher(sessions, channels).deliver(msg, leased, busy)


async def _lease_pending(
    sessions: async_sessionmaker, settings: Settings, msg: Envelope[Any]
) -> tuple[list[tuple[SimpleNamespace, str | None]], int]:
    now = datetime.now(UTC)
    lease_until = now + timedelta(seconds=settings.send_lease_seconds)
    leased: list[tuple[SimpleNamespace, str | None]] = []
    busy = 0
    async with sessions.begin() as session:
        rows = (await session.execute(_PENDING_OF_EVENT, {"event_id": msg.id})).mappings().all()
        for values in rows:
            taken = await session.execute(
                _TAKE_LEASE, {"row_id": values["id"], "now": now, "until": lease_until}
            )
            if taken.rowcount != 1:
                busy += 1
                continue
            row = SimpleNamespace(
                **{**values, "lease_until": lease_until, "attempts": values["attempts"] + 1}
            )
            leased.append((row, await session.scalar(_RECIPIENT_NAME, {"order_id": row.order_id})))
    return leased, busy


class _Job:
    """One event's rows to send, and what its delivery ends with."""

    __slots__ = ("busy", "done", "leased", "msg", "not_sent", "unreachable")

    def __init__(
        self, msg: Envelope[Any], leased: list[tuple[SimpleNamespace, str | None]], busy: int
    ) -> None:
        self.msg, self.leased, self.busy = msg, leased, busy
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.not_sent: list[str] = []
        self.unreachable: Unavailable | None = None

    def outcome(self) -> Exception | None:
        if self.unreachable is not None:  # the event waits for the channel's server, not counted against it
            return self.unreachable
        if self.not_sent:
            return DeliveryPending(f"not sent yet ({'; '.join(self.not_sent)})")
        if self.busy:
            return DeliveryPending(
                f"{self.busy} notification(s) of this event are being sent by another delivery"
            )
        return None


class Dispatcher:
    """Sends the rows of the events that are ready together: each on its channel (e-mails one after
    the other on the kept SMTP connection), then ONE transaction marks them all (sent, failed, or
    pending again) and stages their outcomes. An event's :meth:`deliver` returns, or raises what
    its delivery ends with, once its rows are marked: its message is acked after that."""

    def __init__(
        self,
        sessions: async_sessionmaker,
        channels: dict[str, ChannelAdapter],
        *,
        size: int = 64,
        linger_seconds: float = 0.002,
    ) -> None:
        self._sessions, self._channels = sessions, channels
        self._rounds = Rounds(
            self._dispatch, size=size, linger_seconds=linger_seconds, name="notifications.dispatch"
        )
        self.rounds = 0

    async def deliver(
        self, msg: Envelope[Any], leased: list[tuple[SimpleNamespace, str | None]], busy: int = 0
    ) -> None:
        job = _Job(msg, leased, busy)
        self._rounds.add(job)
        await job.done

    async def _dispatch(self, jobs: list[_Job]) -> None:
        try:
            await self._round(jobs)
        except Exception as exc:  # the marks did not commit: every event of the round is retried
            for job in jobs:
                if not job.done.done():
                    job.done.set_exception(exc)

    async def _round(self, jobs: list[_Job]) -> None:
        finished: list[tuple[_Job, SimpleNamespace, NotificationStatus, str | None, str | None]] = []
        released: list[dict[str, Any]] = []
        for job in jobs:
            for row, name in job.leased:
                adapter = self._channels.get(row.channel)
                outgoing = Outgoing(
                    channel=row.channel,
                    address=row.address or "",
                    name=name,
                    subject=row.subject,
                    body=row.body,
                    locale=row.locale,
                    message_id=row.message_id,
                )
                try:
                    if adapter is None:
                        raise Rejected("channel_unavailable")
                    ref = await adapter.send(outgoing)
                except Rejected as exc:
                    finished.append((job, row, NotificationStatus.FAILED, None, str(exc)))
                except Exception as exc:  # unreachable, Transient, or unexpected: pending, the event retried
                    if isinstance(exc, Unavailable):
                        job.unreachable, reason = exc, f"unavailable: {exc.reason}"
                    else:
                        reason = str(exc) if isinstance(exc, Transient) else type(exc).__name__
                    released.append({"row_id": row.id, "error": reason[:200]})
                    job.not_sent.append(f"{row.channel}: {reason}")
                    log.warning(
                        "notification.not_sent",
                        channel=row.channel,
                        template=row.template,
                        recipient=mask_address(row.channel, row.address),
                        error=reason,
                    )
                else:
                    finished.append((job, row, NotificationStatus.SENT, ref, None))
        marked: list[tuple[SimpleNamespace, str | None]] = []
        if finished or released:
            now = datetime.now(UTC)
            async with self._sessions.begin() as session:
                for job, row, status, sent_ref, error in finished:
                    sent = now if status == NotificationStatus.SENT else None
                    values = {"row_id": row.id, "new_status": status, "ref": sent_ref, "error": error}
                    if (await session.execute(_MARK, {**values, "now": now, "sent": sent})).rowcount != 1:
                        continue  # marked meanwhile by a delivery that took over an expired lease
                    row.status, row.last_error = status, error
                    await _stage_outcome(session, job.msg, row)
                    marked.append((row, error))
                if released:
                    await session.execute(_RELEASE, [{**r, "now": now} for r in released])
        self.rounds += 1
        for row, error in marked:
            log.info(
                f"notification.{row.status}",
                channel=row.channel,
                template=row.template,
                locale=row.locale,
                recipient=mask_address(row.channel, row.address),
                **({"error": error} if error else {}),
            )
        for job in jobs:
            if not job.done.done():
                failure = job.outcome()
                if failure is None:
                    job.done.set_result(None)
                else:
                    job.done.set_exception(failure)


_dispatchers: weakref.WeakKeyDictionary[async_sessionmaker, Dispatcher] = weakref.WeakKeyDictionary()


def dispatcher(sessions: async_sessionmaker, channels: dict[str, ChannelAdapter]) -> Dispatcher:
    """The dispatcher of these sessions (one per service, made on first use)."""
    made = _dispatchers.get(sessions)
    if made is None or made._channels is not channels:
        made = _dispatchers[sessions] = Dispatcher(sessions, channels)
    return made


_RELEASE = (
    update(_notification)
    .where(_notification.c.id == bindparam("row_id"), _notification.c.status == NotificationStatus.PENDING)
    .values(lease_until=None, last_error=bindparam("error"), updated_at=bindparam("now"))
)


async def _stage_outcome(session: AsyncSession, msg: Envelope[Any], row: Any) -> None:
    """``notification.sent`` / ``notification.failed``: channel, template, locale and order only."""
    if row.status == NotificationStatus.SENT:
        event: NotificationSent | NotificationFailed = NotificationSent(
            order_id=row.order_id, channel=row.channel, template=row.template, locale=row.locale
        )
    else:
        event = NotificationFailed(
            order_id=row.order_id,
            channel=row.channel,
            template=row.template,
            reason=row.last_error or "failed",
        )
    await outbox.stage(session, event, service=SERVICE, subject=row.order_id, causation=msg)


# -- the customer's choice of channels --------------------------------------------------------

_PREFERENCE = select(_preference).where(_preference.c.customer_id == bindparam("customer_id"))
_choose = InsertIfAbsent(_preference)
_UPDATE_PREFERENCE = update(_preference).where(_preference.c.customer_id == bindparam("key_customer_id"))


async def preference_of(session: AsyncSession, customer_id: str) -> SimpleNamespace | None:
    return held_first(await session.execute(_PREFERENCE, {"customer_id": customer_id}))


async def choose_channels(
    session: AsyncSession, customer_id: str, *, email: bool, sms: bool, push: bool, at: datetime
) -> SimpleNamespace:
    """The customer's channels from now on (all three chosen at once; all off means none)."""
    values = {"email": email, "sms": sms, "push": push, "updated_at": at}
    if not await _choose(session, {"customer_id": customer_id, **values}):
        await session.execute(_UPDATE_PREFERENCE, {"key_customer_id": customer_id, **values})
    return SimpleNamespace(customer_id=customer_id, **values)
