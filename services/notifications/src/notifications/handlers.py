"""Subscribers: who to tell (``register_recipient``) and what to tell them (``order.status_changed``,
``payment.refunded``, ``payment.action_required``, a parcel's ``shipment.updated``): each event
decoded into the message it is, and handed to ``notifications.service``, which records it and sends
it once recorded."""

from __future__ import annotations

from datetime import UTC
from typing import Annotated

from faststream.rabbit import RabbitRouter
from sqlalchemy.ext.asyncio import async_sessionmaker

from chassis.broker import Resource, queue
from events.envelope import Envelope
from events.notifications import RegisterRecipient
from events.orders import OrderStatusChanged
from events.payments import PaymentActionRequired, PaymentRefunded
from events.shipping import ShipmentUpdated
from notifications import service
from notifications.channels import ChannelAdapter
from notifications.config import Settings
from notifications.domain import PAY_TEMPLATE, REFUND_TEMPLATE, status_template

router = RabbitRouter()

Sessions = Annotated[async_sessionmaker, Resource("sessions")]
Channels = Annotated[dict[str, ChannelAdapter], Resource("channels")]
Config = Annotated[Settings, Resource("settings")]


@router.subscriber(queue(service.REGISTER))
async def handle_register_recipient(msg: Envelope[RegisterRecipient], sessions: Sessions) -> None:
    await service.register(msg, sessions)


@router.subscriber(queue(service.STATUS_CHANGED))
async def on_order_status_changed(
    msg: Envelope[OrderStatusChanged], sessions: Sessions, channels: Channels, settings: Config
) -> None:
    event = msg.data
    await service.notify(
        sessions,
        channels,
        settings,
        msg,
        service.STATUS_CHANGED,
        event.order_id,
        status_template(event.to_status),
        reason=event.reason,
    )


@router.subscriber(queue(service.REFUNDED))
async def on_payment_refunded(
    msg: Envelope[PaymentRefunded], sessions: Sessions, channels: Channels, settings: Config
) -> None:
    event = msg.data
    await service.notify(
        sessions,
        channels,
        settings,
        msg,
        service.REFUNDED,
        event.order_id,
        REFUND_TEMPLATE,
        amount=event.amount,
        currency=event.currency,
    )


@router.subscriber(queue(service.PLEASE_PAY))
async def on_payment_action_required(
    msg: Envelope[PaymentActionRequired], sessions: Sessions, channels: Channels, settings: Config
) -> None:
    """Please pay: the QR code's or the payment page's link, the amount, and until when."""
    event = msg.data
    expires = event.expires_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    await service.notify(
        sessions,
        channels,
        settings,
        msg,
        service.PLEASE_PAY,
        event.order_id,
        PAY_TEMPLATE,
        amount=event.amount,
        currency=event.currency,
        url=event.url,
        expires_at=expires,
    )


@router.subscriber(queue(service.SCANNED))
async def on_shipment_updated(
    msg: Envelope[ShipmentUpdated], sessions: Sessions, channels: Channels, settings: Config
) -> None:
    """A parcel's news, with its carrier, tracking number and link and the delivery estimate. A
    ``returned`` scan of a parcel the customer sent back is their return, told by the order."""
    event = msg.data
    template = service.PARCEL_TEMPLATES.get(event.status)
    if template is None or (event.status == "returned" and not event.undelivered):
        return
    if event.status == "picked_up" and event.replaces:
        template = service.SENT_AGAIN_TEMPLATE
    eta = event.estimated_delivery.isoformat() if event.estimated_delivery else "-"
    await service.notify(
        sessions,
        channels,
        settings,
        msg,
        service.SCANNED,
        event.order_id,
        template,
        carrier=event.carrier,
        tracking_number=event.tracking_number,
        tracking_url=event.tracking_url or "-",
        eta=eta,
        replaces=event.replaces or "-",
    )
