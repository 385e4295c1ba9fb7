"""Audit a running OMS through its public APIs (``make verify``; the fault tests end with it).

Checks, for every order:
- it is final, or something will move it: the carrier (picking, shipped, in transit, return
  requested), or a saga deadline (submitted, confirmed, paid: changed within ``--stuck-after``);
- the stock it holds reserved is exactly its lines while it is confirmed, paid or picking, and
  nothing otherwise;
- captured minus refunded is what it should have paid: its total once paid and not cancelled
  (less what was refunded by hand), nothing when cancelled, less than the total (something
  refunded) when returned;
- it has at most one shipment per parcel (one per warehouse), and there is no payment or shipment
  for an order nobody placed;
- its parcels agree with it: shipped or in transit, every parcel not cancelled has left (but one
  sent instead of a lost one, which holds its units reserved until it leaves); delivered,
  every one ended (delivered, returned or lost) and one arrived; cancelled for a failed delivery,
  none arrived; cancelled otherwise, none waits at a warehouse to be collected, and one the carrier
  has is put to ops (the order needs attention);
- the payment provider's own ledger agrees (reconciliation): every charge it made is on a captured
  payment of ours or refunded in full, every captured payment of ours is a charge there, and every
  refund we recorded is in its ledger (the sandbox's books); and each other provider (Alipay,
  WeChat Pay, PayPal, the card processor), asked about every payment and every refund by
  payments' reconciliation, agrees on what was charged and paid back.

Prints what it found and exits 1 on any breach. ``--settle N`` first waits up to N seconds for the
system to go quiet (no order changing between two looks), so it can follow a load test.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx

OPS = {"Authorization": "Bearer dev-ops-key"}
FINAL = {"delivered", "cancelled", "returned"}
CARRIER_MOVES = {"picking", "shipped", "in_transit", "return_requested"}
SAGA_MOVES = {"submitted", "confirmed", "paid"}
HOLDS_STOCK = {"confirmed", "paid", "picking"}
PAID = {"paid", "picking", "shipped", "in_transit", "delivered", "return_requested"}


@dataclass
class Report:
    orders: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    breaches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.breaches

    def breach(self, text: str) -> None:
        self.breaches.append(text)

    def render(self) -> str:
        lines = [
            f"orders: {self.orders}  " + "  ".join(f"{k}={v}" for k, v in sorted(self.by_status.items()))
        ]
        if self.ok:
            lines.append("consistency: OK (no breach)")
        else:
            lines.append(f"consistency: {len(self.breaches)} breach(es)")
            lines += [f"  - {b}" for b in self.breaches[:200]]
        return "\n".join(lines)


async def _pages(
    client: httpx.AsyncClient, path: str, cursor_param: str, next_key: str, **params: Any
) -> list[dict]:
    items: list[dict] = []
    cursor = None
    while True:
        query = {**params, **({cursor_param: cursor} if cursor else {})}
        r = await client.get(path, params=query, headers=OPS)
        r.raise_for_status()
        page = r.json()
        items += page["items"]
        cursor = page.get(next_key)
        if not cursor:
            return items


async def collect(urls: dict[str, str]) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=30) as client:
        orders, reservations, payments, shipments, ledger, providers = await asyncio.gather(
            _pages(client, urls["orders"] + "/v1/orders", "cursor", "next_cursor", limit=200),
            _pages(
                client, urls["inventory"] + "/v1/reservations", "after", "next", status="reserved", limit=1000
            ),
            _pages(client, urls["payments"] + "/v1/payments", "after", "next", limit=1000),
            _pages(client, urls["shipping"] + "/v1/shipments", "after", "next", limit=1000),
            _ledger(client, urls["payments"]),
            _providers(client, urls["payments"]),
        )
    return {
        "orders": orders,
        "reservations": reservations,
        "payments": payments,
        "shipments": shipments,
        "ledger": ledger,
        "providers": providers,
    }


async def _providers(client: httpx.AsyncClient, payments_url: str) -> dict | None:
    """Each payment's provider asked about it now (payments' reconciliation round): its mismatches."""
    r = await client.get(
        payments_url + "/v1/providers/reconciliation", params={"run": "true"}, headers=OPS, timeout=300
    )
    if r.status_code == 404:
        return None
    r.raise_for_status()
    return r.json()


async def _ledger(client: httpx.AsyncClient, payments_url: str) -> dict[str, list[dict]] | None:
    """The payment provider's own ledger, where payments exposes it (the sandbox provider)."""
    r = await client.get(payments_url + "/v1/providers/sandbox/ledger", headers=OPS)
    if r.status_code == 404:
        return None
    r.raise_for_status()
    return r.json()


def reconcile(report: Report, payments: list[dict], ledger: dict[str, list[dict]]) -> None:
    """Our sandbox payments against the sandbox's books (refunds included; every other provider is
    asked by payments' reconciliation, each payment by its key): no charge nobody accounts for, no capture the
    provider never made, no refund it never paid."""
    refunded_at_provider: defaultdict[str, Decimal] = defaultdict(Decimal)
    for r in ledger["refunds"]:
        refunded_at_provider[r["charge_reference"]] += Decimal(r["amount"])
    refund_keys = {r["key"] for r in ledger["refunds"]}
    payments = [
        p for p in payments if p.get("provider", "sandbox") == "sandbox"
    ]  # the others: reconcile_providers
    ours = {p["provider_ref"]: p for p in payments if p.get("provider_ref")}
    charged = {c["reference"]: c for c in ledger["charges"] if c["status"] == "captured"}
    for ref, charge in charged.items():
        p = ours.get(ref)
        on_capture = (
            p is not None
            and p["status"] in ("captured", "partially_refunded", "refunded")
            and (Decimal(p["amount"]) == Decimal(charge["amount"]))
        )
        if not on_capture and refunded_at_provider[ref] != Decimal(charge["amount"]):
            report.breach(
                f"provider charge {charge['key']} ({charge['amount']}) is on no captured payment and not refunded"
            )
    for p in payments:
        if (
            p["status"] in ("captured", "partially_refunded", "refunded")
            and p.get("provider_ref") not in charged
        ):
            report.breach(f"{p['order_id']}: payment {p['status']} but the provider made no such charge")
        for r in p.get("refunds", []):
            if r["status"] == "refunded" and r.get("refund_key") not in refund_keys:
                report.breach(
                    f"{p['order_id']}: refund {r['refund_key']} recorded but the provider paid no such refund"
                )


UNDELIVERED = {"returned", "lost"}
ENDED = {"delivered"} | UNDELIVERED
AT_WAREHOUSE = {"created"}


def _sent_again(parcels: list[dict]) -> bool:
    """A parcel was lost and another waits at the warehouse: sent instead (its units reserved)."""
    live = [p for p in parcels if not p.get("cancelled")]
    return any(p.get("status") == "lost" for p in live) and any(p.get("status") in AT_WAREHOUSE for p in live)


def _check_parcels(report: Report, order: dict, parcels: list[dict]) -> None:
    """The order's parcels (as shipping lists them) against the order's status."""
    order_id, status = order["id"], order["status"]
    names = Counter(p.get("parcel") or p.get("warehouse") for p in parcels)
    if any(n > 1 for n in names.values()):
        report.breach(f"{order_id}: more than one shipment for one parcel")
    live = [p for p in parcels if not p.get("cancelled") and p.get("status")]
    states = [p["status"] for p in live]
    if (
        status in ("shipped", "in_transit")
        and any(s in AT_WAREHOUSE for s in states)
        and not _sent_again(parcels)
    ):
        report.breach(f"{order_id}: {status} but a parcel waits at the warehouse")
    if status == "delivered" and live and (not all(s in ENDED for s in states) or "delivered" not in states):
        report.breach(f"{order_id}: delivered but its parcels are {states}")
    if status == "cancelled":
        if order.get("status_reason") == "delivery_failed" and "delivered" in states:
            report.breach(f"{order_id}: cancelled delivery_failed but a parcel was delivered")
        if any(s in AT_WAREHOUSE for s in states):
            report.breach(f"{order_id}: cancelled but a parcel waits at the warehouse to be collected")
        elif any(s not in ENDED for s in states) and not order.get("attention"):
            report.breach(f"{order_id}: cancelled with a parcel on its way, and nobody asked to get it back")


def audit(data: dict[str, Any], *, now: datetime, stuck_after: timedelta) -> Report:
    report = Report()
    orders = {o["id"]: o for o in data["orders"]}
    report.orders = len(orders)
    report.by_status = Counter(o["status"] for o in orders.values())

    held: dict[str, Counter[str]] = defaultdict(Counter)
    for r in data["reservations"]:
        held[r["order_id"]][r["sku"]] += int(r["quantity"])
    payments = {p["order_id"]: p for p in data["payments"]}
    shipments: dict[str, list[dict]] = defaultdict(list)
    for s in data["shipments"]:
        shipments[s["order_id"]].append(s)

    for order_id, order in orders.items():
        status = order["status"]
        updated = datetime.fromisoformat(order["updated_at"])
        if status in SAGA_MOVES and now - updated > stuck_after:
            report.breach(f"{order_id}: stuck in {status} since {order['updated_at']}")
        elif status not in FINAL | CARRIER_MOVES | SAGA_MOVES:
            report.breach(f"{order_id}: unknown status {status}")

        lines: Counter[str] = Counter()
        for item in order["items"]:
            lines[item["sku"]] += int(item["quantity"])
        holds = held.pop(order_id, Counter())
        parcels = shipments.pop(order_id, [])
        lost_some = any(p.get("status") in UNDELIVERED and not p.get("cancelled") for p in parcels)
        if status in HOLDS_STOCK and holds != lines:
            report.breach(f"{order_id}: {status} but holds {dict(holds)} reserved for lines {dict(lines)}")
        elif (
            status not in HOLDS_STOCK | {"submitted"}
            and holds
            and not (status in CARRIER_MOVES and _sent_again(parcels))
        ):
            report.breach(f"{order_id}: {status} still holds {dict(holds)} reserved")

        p = payments.pop(order_id, None)
        captured = Decimal(p["amount"]) if p and p["status"] not in ("failed", "capturing") else Decimal("0")
        if p and p["status"] == "capturing" and status in FINAL:
            report.breach(f"{order_id}: {status} while its payment is still capturing")
        refunded = Decimal(p["refunded_amount"]) if p else Decimal("0")
        total = Decimal(order["total"])
        kept = captured - refunded
        # a refund by hand (a goodwill gesture, ops' console) is money the shop chose to give back
        by_hand = sum(
            (
                Decimal(r["amount"])
                for r in (p or {}).get("refunds", [])
                if str(r.get("refund_key") or "").startswith("manual-") and r["status"] == "refunded"
            ),
            Decimal("0"),
        )
        if (
            status in PAID
            and status != "return_requested"
            and kept != total - by_hand
            and not (lost_some and 0 < kept < total)
        ):
            report.breach(f"{order_id}: {status} but kept {kept} of a {total} order")
        elif status == "cancelled" and kept != 0:
            report.breach(f"{order_id}: cancelled but kept {kept} (captured {captured}, refunded {refunded})")
        elif status == "returned" and not (0 <= kept < total):
            report.breach(f"{order_id}: returned but kept {kept} of {total}")
        elif (
            status in ("submitted", "confirmed") and captured and not refunded and now - updated > stuck_after
        ):
            report.breach(f"{order_id}: {status} with a capture of {captured} for long")

        _check_parcels(report, order, parcels)

    if data.get("ledger") is not None:
        reconcile(report, data["payments"], data["ledger"])
    providers: Any = data.get("providers") or {}
    for m in providers.get("mismatches", []):
        report.breach(
            f"{m['order_id']}: {m['provider']} disagrees ({m['kind']}): ours {m['ours']}, theirs {m['theirs']}"
        )
    for order_id in held:
        report.breach(f"stock reserved for unknown order {order_id}")
    for order_id in payments:
        report.breach(f"payment for unknown order {order_id}")
    for order_id in shipments:
        report.breach(f"shipment for unknown order {order_id}")
    return report


async def verify(
    urls: dict[str, str], *, stuck_after: timedelta = timedelta(minutes=2), settle: float = 0.0
) -> Report:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settle
    data = await collect(urls)
    while loop.time() < deadline:
        report = audit(data, now=datetime.now(UTC), stuck_after=stuck_after)
        moving = sum(v for k, v in report.by_status.items() if k in SAGA_MOVES)
        if report.ok and moving == 0:
            return report
        await asyncio.sleep(1.0)
        data = await collect(urls)
    return audit(data, now=datetime.now(UTC), stuck_after=stuck_after)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omstools.verify", description=__doc__.split("\n")[0])
    for service, port in (("orders", 8000), ("inventory", 8001), ("payments", 8002), ("shipping", 8003)):
        parser.add_argument(f"--{service}-url", default=f"http://127.0.0.1:{port}")
    parser.add_argument("--stuck-after", type=float, default=120.0, help="seconds a saga step may take")
    parser.add_argument(
        "--settle", type=float, default=0.0, help="wait up to this many seconds for quiet first"
    )
    args = parser.parse_args(argv)
    urls = {s: getattr(args, f"{s}_url").rstrip("/") for s in ("orders", "inventory", "payments", "shipping")}
    try:
        report = asyncio.run(
            verify(urls, stuck_after=timedelta(seconds=args.stuck_after), settle=args.settle)
        )
    except httpx.HTTPError as exc:
        print(f"verify: cannot read the system: {exc!r}", file=sys.stderr)
        return 2
    print(report.render())
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
