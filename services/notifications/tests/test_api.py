"""HTTP: preferences (gateway writes, ops reads) and the ops list of what was sent, masked."""

from __future__ import annotations

from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI

from chassis.web import install
from notifications.api import router
from notifications.handlers import handle_register_recipient, on_order_status_changed

from .test_handlers import register, status_changed

GATEWAY = {"Authorization": "Bearer dev-gateway-key"}
OPS = {"Authorization": "Bearer dev-ops-key"}
ADMIN = {"Authorization": "Bearer dev-admin-key"}


@pytest.fixture
async def client(sessions, settings):
    app = FastAPI()
    install(app, "notifications")
    app.include_router(router)
    app.state.runtime = SimpleNamespace(sessions=sessions, settings=settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        yield c


async def test_preferences_default_to_email_only_until_the_customer_chooses(client):
    got = await client.get("/v1/preferences/cust-42", headers=GATEWAY)
    assert got.status_code == 200
    assert got.json() == {
        "customer_id": "cust-42",
        "channels": {"email": True, "sms": False, "push": False},
        "updated_at": None,
    }

    put = await client.put(
        "/v1/preferences/cust-42",
        headers=GATEWAY,
        json={"channels": {"email": False, "sms": True, "push": True}},
    )
    assert put.status_code == 200 and put.json()["channels"] == {"email": False, "sms": True, "push": True}
    again = (await client.get("/v1/preferences/cust-42", headers=OPS)).json()
    assert again["channels"] == {"email": False, "sms": True, "push": True} and again["updated_at"]

    by_admin = await client.put(
        "/v1/preferences/cust-42",
        headers=ADMIN,
        json={"channels": {"email": True, "sms": False, "push": False}},
    )
    assert by_admin.status_code == 200


async def test_preferences_refuse_unknown_channels_and_half_choices(client):
    for body in (
        {"channels": {"email": True, "sms": False, "push": False, "fax": True}},
        {"channels": {"email": True}},
        {"email": True},
    ):
        answer = await client.put("/v1/preferences/cust-42", headers=GATEWAY, json=body)
        assert answer.status_code == 422, body
        assert answer.headers["content-type"].startswith("application/problem+json")


async def test_preferences_need_the_right_key(client):
    assert (await client.get("/v1/preferences/cust-42")).status_code == 401
    body = {"channels": {"email": True, "sms": False, "push": False}}
    assert (await client.put("/v1/preferences/cust-42", headers=OPS, json=body)).status_code == 403


async def test_ops_see_what_was_sent_for_an_order_with_the_recipient_masked(
    client, sessions, channels, settings
):
    await handle_register_recipient(register("ord-1"), sessions)
    await handle_register_recipient(register("ord-2", email="other@example.com"), sessions)
    await on_order_status_changed(status_changed("submitted", "ord-1"), sessions, channels, settings)
    await on_order_status_changed(status_changed("confirmed", "ord-1"), sessions, channels, settings)
    await on_order_status_changed(status_changed("submitted", "ord-2"), sessions, channels, settings)

    answer = await client.get("/v1/notifications", params={"order_id": "ord-1"}, headers=OPS)
    assert answer.status_code == 200
    items = answer.json()["items"]
    assert [i["template"] for i in items] == ["order.confirmed", "order.submitted"], "newest first"
    assert all(i["recipient"] == "l***@example.com" and i["status"] == "sent" for i in items)
    assert "lin@example.com" not in answer.text and "Lin Mei" not in answer.text

    assert (await client.get("/v1/notifications", params={"status": "failed"}, headers=OPS)).json()[
        "items"
    ] == []
    assert (await client.get("/v1/notifications", headers=GATEWAY)).status_code == 403
