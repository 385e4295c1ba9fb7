"""SMS and push through the providers' HTTP APIs, against this service's stand-ins of them."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from events.envelope import Envelope, build
from events.notifications import RegisterRecipient
from events.shipping import ShipmentUpdated
from notifications import providers
from notifications.channels import Outgoing, Rejected, Transient
from notifications.config import Settings
from notifications.db import Preference
from notifications.handlers import handle_register_recipient, on_shipment_updated


def register() -> Envelope[RegisterRecipient]:
    cmd = RegisterRecipient(
        order_id="ord-1",
        customer_id="cust-42",
        name="Lin Mei",
        email="lin@example.com",
        phone="+8613800000000",
        locale="en",
    )
    return Envelope[RegisterRecipient].model_validate(build(cmd, service="orders", subject="ord-1"))


def picked_up() -> Envelope[ShipmentUpdated]:
    event = ShipmentUpdated(
        order_id="ord-1",
        shipment_id="shp-1",
        carrier="sf-express",
        tracking_number="SF123456789012",
        status="picked_up",
        at=datetime.now(UTC),
        tracking_url="https://track.example/SF123456789012",
    )
    return Envelope[ShipmentUpdated].model_validate(build(event, service="shipping", subject="ord-1"))


@pytest.fixture
def standins(settings):
    return providers.standins(settings)


@pytest.fixture
def transport(standins):
    app = FastAPI()
    app.include_router(providers.standins_router(standins))
    return httpx.ASGITransport(app=app)


def outgoing(address: str, channel: str = "sms") -> Outgoing:
    return Outgoing(
        channel=channel,
        address=address,
        name="Lin Mei",
        subject="Hello",
        body="Your parcel SF1",
        locale="en",
        message_id="<m@x>",
    )


async def test_the_shipped_sms_and_push_reach_the_providers_with_the_tracking_number(
    sessions, channels, settings, standins, transport
):
    real = {**channels, **providers.adapters(settings, transport)}
    await handle_register_recipient(register(), sessions)
    async with sessions.begin() as session:
        session.add(
            Preference(customer_id="cust-42", email=True, sms=True, push=True, updated_at=datetime.now(UTC))
        )
    await on_shipment_updated(picked_up(), sessions, real, settings)
    [sms], [push] = standins.sms, standins.push
    assert sms["to"] == "+8613800000000" and "SF123456789012" in sms["body"] and "sf-express" in sms["body"]
    assert push["token"] == "cust-42" and "SF123456789012" in push["notification"]["body"]
    assert push["name"].startswith("projects/oms-dev/messages/")


async def test_a_number_the_provider_refuses_is_rejected_and_bad_credentials_are_transient(
    settings, transport
):
    sms = providers.adapters(settings, transport)["sms"]
    with pytest.raises(Rejected, match="sms_400"):
        await sms.send(outgoing("not-a-number"))
    wrong = providers.adapters(
        settings.model_copy(update={"fcm_access_token": SecretStr("stolen")}), transport
    )["push"]
    with pytest.raises(Transient, match="fcm_401"):
        await wrong.send(outgoing("cust-42", "push"))
    unreachable = providers.adapters(settings.model_copy(update={"sms_url": "http://127.0.0.1:9"}))["sms"]
    with pytest.raises(Transient):
        await unreachable.send(outgoing("+8613800000000"))


def test_production_refuses_the_standins():
    prod = {
        "environment": "production",
        "api_keys": "ops-team:admin:" + "ab" * 32,
        "amqp_url": "amqp://oms:s3cret@broker/",
    }
    with pytest.raises(ValueError, match="real SMS and push providers"):
        Settings(**prod)
    with pytest.raises(ValueError, match="dev credentials"):
        Settings(**prod, sms_url="https://api.twilio.com", fcm_url="https://fcm.googleapis.com")
    Settings(
        **prod,
        sms_url="https://api.twilio.com",
        fcm_url="https://fcm.googleapis.com",
        sms_auth_token="t",
        fcm_access_token="a",
    )


async def test_production_serves_no_standin_and_a_local_run_does():
    from notifications.app import create_app

    prod = Settings(
        environment="production",
        api_keys="ops-team:admin:" + "ab" * 32,
        amqp_url="amqp://oms:s3cret@broker/",
        sms_url="https://api.twilio.com",
        fcm_url="https://fcm.googleapis.com",
        sms_auth_token="t",
        fcm_access_token="a",
    )
    path = "/sandbox/sms/2010-04-01/Accounts/AC-dev/Messages.json"
    form = {"To": "+8613800000000", "From": "+10000000000", "Body": "hi"}
    for app, found in ((create_app(prod), False), (create_app(Settings()), True)):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            answer = await client.post(path, data=form)
        assert (answer.status_code != 404) is found, (found, answer.status_code)
