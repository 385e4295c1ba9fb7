"""The consistency audit on made-up snapshots: each breach it must see, and a clean system."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from omstools.verify import audit

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
STUCK = timedelta(minutes=2)


def order(order_id: str, status: str, *, qty: int = 2, total: str = "20.00", age: float = 1.0) -> dict:
    return {
        "id": order_id,
        "status": status,
        "total": total,
        "items": [{"sku": "A", "quantity": qty}],
        "updated_at": (NOW - timedelta(seconds=age)).isoformat(),
    }


def paid(order_id: str, amount: str = "20.00", refunded: str = "0.00", status: str = "captured") -> dict:
    return {"order_id": order_id, "amount": amount, "refunded_amount": refunded, "status": status}


def reserved(order_id: str, qty: int = 2) -> dict:
    return {"order_id": order_id, "sku": "A", "quantity": qty}


def check(orders=(), reservations=(), payments=(), shipments=()):
    return audit(
        {
            "orders": list(orders),
            "reservations": list(reservations),
            "payments": list(payments),
            "shipments": list(shipments),
        },
        now=NOW,
        stuck_after=STUCK,
    )


def test_a_consistent_system_passes():
    report = check(
        orders=[
            order("d", "delivered"),
            order("c", "cancelled"),
            order("p", "picking"),
            order("r", "returned"),
        ],
        reservations=[reserved("p")],
        payments=[
            paid("d"),
            paid("c", refunded="20.00", status="refunded"),
            paid("p"),
            paid("r", refunded="10.00"),
        ],
        shipments=[{"order_id": "d"}, {"order_id": "p"}, {"order_id": "r"}],
    )
    assert report.ok, report.breaches
    assert report.by_status["delivered"] == 1


def test_each_breach_is_seen():
    report = check(
        orders=[
            order("stuck", "confirmed", age=600),
            order("kept", "cancelled"),
            order("held", "cancelled"),
            order("short", "picking"),
            order("twice", "delivered"),
            order("unpaid", "delivered"),
        ],
        reservations=[reserved("held"), reserved("short", 1), reserved("ghost")],
        payments=[paid("kept"), paid("short"), paid("twice"), paid("ghost")],
        shipments=[{"order_id": "twice"}, {"order_id": "twice"}],
    )
    text = "\n".join(report.breaches)
    for expected in (
        "stuck: stuck in confirmed",
        "kept: cancelled but kept 20.00",
        "held: cancelled still holds",
        "short: picking but holds",
        "twice: more than one shipment for one parcel",
        "unpaid: delivered but kept 0",
        "stock reserved for unknown order ghost",
        "payment for unknown order ghost",
    ):
        assert expected in text, (expected, text)
    assert not report.ok


def charge(order_id: str, amount: str = "20.00", status: str = "captured") -> dict:
    return {
        "key": f"capture:{order_id}",
        "status": status,
        "reference": f"pay_{order_id}",
        "amount": amount,
        "currency": "CNY",
    }


def test_the_provider_ledger_is_reconciled_with_our_payments():
    ok = dict(paid("d"), provider_ref="pay_d", refunds=[])
    refunded = dict(
        paid("c", refunded="20.00", status="refunded"),
        provider_ref="pay_c",
        refunds=[{"refund_key": "c:cancel", "status": "refunded"}],
    )
    clean = audit(
        {
            "orders": [order("d", "delivered"), order("c", "cancelled")],
            "reservations": [],
            "payments": [ok, refunded],
            "shipments": [{"order_id": "d"}],
            "ledger": {
                "charges": [charge("d"), charge("c"), charge("v", status="voided")],
                "refunds": [{"key": "c:cancel", "charge_reference": "pay_c", "amount": "20.00"}],
            },
        },
        now=NOW,
        stuck_after=STUCK,
    )
    assert clean.ok, clean.breaches

    broken = audit(
        {
            "orders": [order("d", "delivered"), order("x", "cancelled")],
            "reservations": [],
            "payments": [
                dict(ok, refunds=[{"refund_key": "d:gift", "status": "refunded"}]),
                dict(paid("x", status="failed"), provider_ref=None, refunds=[]),
            ],
            "shipments": [{"order_id": "d"}],
            # charged for x though we recorded it failed, and never refunded: money lost
            "ledger": {"charges": [charge("x")], "refunds": []},
        },
        now=NOW,
        stuck_after=STUCK,
    )
    text = "\n".join(broken.breaches)
    for expected in (
        "provider charge capture:x (20.00) is on no captured payment and not refunded",
        "d: payment captured but the provider made no such charge",
        "d: refund d:gift recorded but the provider paid no such refund",
    ):
        assert expected in text, (expected, text)


def parcel(order_id: str, name: str, status: str, cancelled: bool = False) -> dict:
    return {"order_id": order_id, "parcel": name, "warehouse": name, "status": status, "cancelled": cancelled}


def test_parcels_are_checked_against_their_order():
    clean = check(
        orders=[
            order("split", "delivered", total="30.00"),
            order("lost", "delivered", total="30.00"),
            order("back", "cancelled") | {"status_reason": "delivery_failed"},
            order("gone", "cancelled") | {"attention": "ask for parcel T1 back"},
            order("moving", "in_transit"),
        ],
        payments=[
            paid("split", "30.00"),
            paid("lost", "30.00", refunded="10.00"),
            paid("back", refunded="20.00"),
            paid("gone", refunded="20.00"),
            paid("moving"),
        ],
        shipments=[
            parcel("split", "SH", "delivered"),
            parcel("split", "BJ", "delivered"),
            parcel("lost", "SH", "delivered"),
            parcel("lost", "BJ", "lost"),
            parcel("back", "SH", "returned"),
            parcel("gone", "SH", "in_transit"),
            parcel("gone", "BJ", "created", cancelled=True),
            parcel("moving", "SH", "in_transit"),
            parcel("moving", "BJ", "out_for_delivery"),
        ],
    )
    assert clean.ok, clean.breaches
    broken = check(
        orders=[
            order("early", "delivered"),
            order("waits", "shipped"),
            order("lie", "cancelled") | {"status_reason": "delivery_failed"},
            order("left", "cancelled"),
            order("forgot", "cancelled"),
        ],
        payments=[
            paid("early"),
            paid("waits"),
            paid("lie", refunded="20.00"),
            paid("left", refunded="20.00"),
            paid("forgot", refunded="20.00"),
        ],
        shipments=[
            parcel("early", "SH", "delivered"),
            parcel("early", "BJ", "in_transit"),
            parcel("waits", "SH", "picked_up"),
            parcel("waits", "BJ", "created"),
            parcel("lie", "SH", "delivered"),
            parcel("left", "SH", "created"),
            parcel("forgot", "SH", "in_transit"),
        ],
    )
    text = "\n".join(broken.breaches)
    for expected in (
        "early: delivered but its parcels",
        "waits: shipped but a parcel waits",
        "lie: cancelled delivery_failed but a parcel was delivered",
        "left: cancelled but a parcel waits",
        "forgot: cancelled with a parcel on its way",
    ):
        assert expected in text, (expected, text)


def test_a_parcel_sent_instead_of_a_lost_one_may_wait_at_the_warehouse_with_its_units_reserved():
    clean = check(
        orders=[order("again", "in_transit", qty=2)],
        payments=[paid("again")],
        reservations=[reserved("again", 1)],
        shipments=[
            parcel("again", "SH", "lost"),
            parcel("again", "SH+1", "created"),
            parcel("again", "BJ", "in_transit"),
        ],
    )
    assert clean.ok, clean.breaches
    broken = check(
        orders=[order("held", "in_transit", qty=2)],
        payments=[paid("held")],
        reservations=[reserved("held", 1)],
        shipments=[parcel("held", "SH", "in_transit"), parcel("held", "BJ", "in_transit")],
    )
    assert "held: in_transit still holds" in "\n".join(broken.breaches)


def test_a_refund_by_hand_is_money_the_shop_gave_back_not_a_breach():
    goodwill = dict(
        paid("p", refunded="5.00", status="partially_refunded"),
        refunds=[{"refund_key": "manual-1", "amount": "5.00", "status": "refunded"}],
    )
    assert check(
        orders=[order("p", "picking")],
        reservations=[reserved("p")],
        payments=[goodwill],
        shipments=[{"order_id": "p"}],
    ).ok
    lost = dict(
        paid("q", refunded="5.00", status="partially_refunded"),
        refunds=[{"refund_key": "q:cancel", "amount": "5.00", "status": "refunded"}],
    )
    report = check(
        orders=[order("q", "picking")],
        reservations=[reserved("q")],
        payments=[lost],
        shipments=[{"order_id": "q"}],
    )
    assert "q: picking but kept 15.00 of a 20.00 order" in report.breaches


def test_a_provider_that_disagrees_is_a_breach_and_other_providers_are_not_read_in_the_sandbox_ledger():
    alipay = {
        "order_id": "o1",
        "payment_id": "p1",
        "status": "captured",
        "amount": "10.00",
        "refunded_amount": "0",
        "provider": "alipay",
        "provider_ref": "2026120200001",
        "refunds": [],
    }
    data = {
        "orders": [],
        "reservations": [],
        "payments": [alipay],
        "shipments": [],
        "ledger": {"charges": [], "refunds": []},
        "providers": {"mismatches": []},
    }
    report = audit(data, now=NOW, stuck_after=timedelta(minutes=2))
    assert not any("no such charge" in b for b in report.breaches), report.breaches
    data["providers"] = {
        "mismatches": [
            {
                "order_id": "o1",
                "provider": "alipay",
                "kind": "recorded_not_charged",
                "ours": "captured 10.00 CNY",
                "theirs": "no charge",
            }
        ]
    }
    report = audit(data, now=NOW, stuck_after=timedelta(minutes=2))
    assert any("alipay disagrees (recorded_not_charged)" in b for b in report.breaches), report.breaches
