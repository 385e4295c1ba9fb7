"""Subscribers: each command of the saga, decoded, handed to ``payments.service`` (the money path)."""

from __future__ import annotations

from typing import Annotated

from faststream.rabbit import RabbitRouter
from sqlalchemy.ext.asyncio import async_sessionmaker

from chassis.broker import Resource, queue
from events.envelope import Envelope
from events.payments import CancelPayment, CapturePayment, RefundPayment
from payments import service
from payments.adapters.registry import Providers
from payments.config import Settings

router = RabbitRouter()

Sessions = Annotated[async_sessionmaker, Resource("sessions")]
ProvidersDep = Annotated[Providers, Resource("providers")]
Config = Annotated[Settings, Resource("settings")]


@router.subscriber(queue(service.CAPTURE))
async def handle_capture_payment(
    msg: Envelope[CapturePayment], sessions: Sessions, providers: ProvidersDep, settings: Config
) -> None:
    """Take an order's payment: a token is charged at once; a wallet without one is opened for the
    customer to pay (``payment.captured``, ``payment.action_required`` or ``payment.failed``)."""
    await service.capture(msg, sessions, providers, settings)


@router.subscriber(queue(service.REFUND))
async def handle_refund_payment(
    msg: Envelope[RefundPayment], sessions: Sessions, providers: ProvidersDep, settings: Config
) -> None:
    """Pay back all or part of an order's capture, once per refund key (``payment.refunded``)."""
    await service.refund(msg, sessions, providers, settings)


@router.subscriber(queue(service.CANCEL))
async def handle_cancel_payment(
    msg: Envelope[CancelPayment], sessions: Sessions, providers: ProvidersDep, settings: Config
) -> None:
    """Close at its provider the payment of an order cancelled while its customer was paying."""
    await service.cancel(msg, sessions, providers, settings)
