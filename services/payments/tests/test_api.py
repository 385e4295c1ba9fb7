"""The payments HTTP API: a refund by hand records the admin key that asked for it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace

import httpx
from fastapi import FastAPI
from sqlalchemy import select

from chassis.db import outbox_message
from chassis.web import install
from payments.api import router
from payments.config import Settings
from payments.db import Payment, Refund

ADMIN = {"Authorization": "Bearer dev-admin-key"}
OPS = {"Authorization": "Bearer dev-ops-key"}


async def test_a_refund_by_hand_records_who_asked_for_it(sessions):
    app = FastAPI()
    install(app, "payments")
    app.include_router(router)
    app.state.runtime = SimpleNamespace(sessions=sessions, settings=Settings(database_url="sqlite://"))
    now = datetime.now(UTC)
    async with sessions.begin() as session:
        session.add(
            Payment(
                order_id="o1",
                payment_id="pay-1",
                method="card",
                token_hint="tok_***",
                currency="CNY",
                amount=Decimal("25.00"),
                status="captured",
                refunded_amount=Decimal("0"),
                created_at=now,
                updated_at=now,
            )
        )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        body = {"amount": "5.00", "reason": "scratched mug"}
        assert (await client.post("/v1/payments/o1/refunds", json=body, headers=OPS)).status_code == 403
        r = await client.post("/v1/payments/o1/refunds", json=body, headers=ADMIN)
        assert r.status_code == 202
        key = r.json()["refund_key"]
        async with sessions() as session:
            staged = json.loads((await session.execute(select(outbox_message.c.body))).scalar_one())
        assert staged["data"]["refund_key"] == key
        async with sessions.begin() as session:  # what the refund handler writes when it takes the command
            session.add(
                Refund(
                    refund_id="rf-1",
                    refund_key=key,
                    order_id="o1",
                    amount=Decimal("5.00"),
                    reason="scratched mug",
                    status="refunded",
                    created_at=now,
                )
            )
        shown = (await client.get("/v1/payments/o1", headers=OPS)).json()
    assert [(r["refund_id"], r["requested_by"]) for r in shown["refunds"]] == [("rf-1", "dev-admin")]
