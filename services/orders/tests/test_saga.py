"""Every path of the order saga, one test each (pure: no database, no broker)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from events.inventory import Shortage, StockReleased, StockReservationFailed, StockReserved
from events.payments import PaymentActionRequired, PaymentCaptured, PaymentFailed, PaymentRefunded
from events.shipping import (
    ShipmentCancelled,
    ShipmentCreated,
    ShipmentFailed,
    ShipmentReturned,
    ShipmentUpdated,
)
from events.types import Allocation, LineItem
from orders.saga import (
    AddressChangeRequested,
    CancelPayment,
    CancelRequested,
    CancelShipment,
    Capture,
    ChangeShipmentAddress,
    Commit,
    CreateShipment,
    DeadlineReached,
    ExpectReturn,
    RaiseAttention,
    Refund,
    Refused,
    Release,
    Reserve,
    Restock,
    ReturnRequested,
    Saga,
    Timeouts,
    Warn,
    advance,
    start,
)

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
TIMEOUTS = Timeouts(resend_seconds=30, warn_seconds=60, give_up_seconds=90)
ORDER = "ord_1"
TOTAL = Decimal("79.80")

RESERVED = StockReserved(
    order_id=ORDER, allocations=[Allocation(warehouse="SH", sku="SKU-RED-MUG", quantity=2)]
)
OUT_OF_STOCK = StockReservationFailed(
    order_id=ORDER, shortages=[Shortage(sku="SKU-RED-MUG", quantity=2, available=1)]
)
RELEASED = StockReleased(order_id=ORDER, allocations=[])
CAPTURED = PaymentCaptured(order_id=ORDER, payment_id="pay-1", amount=TOTAL, currency="CNY", method="card")
DECLINED = PaymentFailed(order_id=ORDER, reason="declined")
SHIP_CREATED = ShipmentCreated(
    order_id=ORDER,
    shipment_id="shp-1",
    carrier="sf-express",
    tracking_number="SF1",
    warehouse="SH",
    estimated_delivery=date(2026, 11, 27),
)
BOOK = CreateShipment(warehouse="SH", parcel="SH", items=(LineItem(sku="SKU-RED-MUG", quantity=2),))
SHIP_FAILED = ShipmentFailed(order_id=ORDER, reason="no_carrier")
SHIP_CANCELLED = ShipmentCancelled(order_id=ORDER, shipment_id="shp-1")


def carrier(status: str) -> ShipmentUpdated:
    return ShipmentUpdated(
        order_id=ORDER, shipment_id="shp-1", carrier="sf-express", tracking_number="SF1", status=status, at=T0
    )


def refunded(
    key: str, amount: Decimal, refund_id: str = "ref-1", total: Decimal | None = None
) -> PaymentRefunded:
    return PaymentRefunded(
        order_id=ORDER,
        payment_id="pay-1",
        refund_id=refund_id,
        refund_key=key,
        amount=amount,
        refunded_total=total if total is not None else amount,
        currency="CNY",
    )


def run(*replies, now: datetime = T0, prices: tuple = ()) -> tuple[Saga, list]:
    """Start a saga and feed it the replies; returns the saga and every intent along the way."""
    saga, intents = start(
        order_id=ORDER, total=TOTAL, currency="CNY", now=now, timeouts=TIMEOUTS, prices=prices
    )
    seen = list(intents)
    for reply in replies:
        saga, intents = advance(saga, reply, now=now, timeouts=TIMEOUTS)
        seen += intents
    return saga, seen


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_happy_path_reaches_delivered_and_commits_stock_once():
    saga, intents = run(
        RESERVED,
        CAPTURED,
        SHIP_CREATED,
        carrier("picked_up"),
        carrier("in_transit"),
        carrier("out_for_delivery"),
        carrier("delivered"),
    )
    assert saga.status == "delivered"
    assert intents == [Reserve(), Capture(), BOOK, Commit(warehouse="SH")]
    assert saga.deadline_at is None


def test_each_status_in_order():
    saga, _ = start(order_id=ORDER, total=TOTAL, currency="CNY", now=T0, timeouts=TIMEOUTS)
    seen = [saga.status]
    for reply in (
        RESERVED,
        CAPTURED,
        SHIP_CREATED,
        carrier("picked_up"),
        carrier("in_transit"),
        carrier("delivered"),
    ):
        saga, _ = advance(saga, reply, now=T0, timeouts=TIMEOUTS)
        seen.append(saga.status)
    assert seen == ["submitted", "confirmed", "paid", "picking", "shipped", "in_transit", "delivered"]


def test_out_of_stock_cancels_without_charging_or_releasing():
    saga, intents = run(OUT_OF_STOCK)
    assert (saga.status, saga.reason) == ("cancelled", "out_of_stock")
    assert intents == [Reserve()]
    assert saga.deadline_at is None


def test_payment_declined_releases_stock():
    saga, intents = run(RESERVED, DECLINED)
    assert (saga.status, saga.reason) == ("cancelled", "payment_declined")
    assert intents[-1] == Release()
    saga, _ = advance(saga, RELEASED, now=T0, timeouts=TIMEOUTS)
    assert saga.stock == "released" and saga.deadline_at is None


def test_silence_of_payments_resends_the_capture_warns_and_only_then_gives_up():
    saga, _ = run(RESERVED)
    assert saga.deadline_at == at(30)
    early, intents = advance(saga, DeadlineReached(), now=at(5), timeouts=TIMEOUTS)
    assert early.status == "confirmed" and intents == []
    saga, intents = advance(saga, DeadlineReached(), now=at(30), timeouts=TIMEOUTS)
    assert saga.status == "confirmed" and intents == [Capture()]  # resent, not cancelled
    saga, intents = advance(saga, DeadlineReached(), now=at(60), timeouts=TIMEOUTS)
    assert saga.status == "confirmed" and saga.warned
    assert intents == [Warn(step="capture", waiting_since=T0, give_up_at=at(90)), Capture()]
    saga, intents = advance(saga, DeadlineReached(), now=at(90), timeouts=TIMEOUTS)
    assert (saga.status, saga.reason) == ("cancelled", "saga_timeout")
    assert intents == [Release()]


def test_an_answer_after_resends_moves_on_and_stops_waiting():
    saga, _ = run(RESERVED)
    saga, _ = advance(saga, DeadlineReached(), now=at(30), timeouts=TIMEOUTS)
    saga, intents = advance(saga, CAPTURED, now=at(40), timeouts=TIMEOUTS)
    assert saga.status == "paid" and saga.waiting_since == at(40) and not saga.warned
    assert intents == [BOOK]


def test_a_capture_payments_took_too_late_cancels_with_payment_timeout():
    saga, _ = run(RESERVED, PaymentFailed(order_id=ORDER, reason="expired"))
    assert (saga.status, saga.reason) == ("cancelled", "payment_timeout")


def test_capture_after_the_saga_gave_up_is_refunded_never_kept():
    saga, _ = run(RESERVED)
    saga, _ = advance(saga, DeadlineReached(), now=at(91), timeouts=TIMEOUTS)
    saga, intents = advance(saga, CAPTURED, now=at(100), timeouts=TIMEOUTS)
    assert saga.status == "cancelled" and saga.reason == "saga_timeout"
    assert intents == [Refund(amount=TOTAL, key=f"{ORDER}:cancel")]
    again, intents = advance(saga, CAPTURED, now=at(21), timeouts=TIMEOUTS)
    assert intents == []  # the same capture twice: still one refund


def test_no_carrier_cancels_refunds_and_releases():
    saga, intents = run(RESERVED, CAPTURED, SHIP_FAILED)
    assert (saga.status, saga.reason) == ("cancelled", "shipment_failed")
    assert intents[-2:] == [Refund(amount=TOTAL, key=f"{ORDER}:cancel"), Release()]


@pytest.mark.parametrize(
    ("replies", "compensations"),
    [
        ((), [Release()]),
        ((RESERVED,), [Release()]),
        # paid: the shipment is being booked, so it is cancelled too; the stock waits for its answer
        ((RESERVED, CAPTURED), [CancelShipment(), Refund(amount=TOTAL, key=f"{ORDER}:cancel")]),
        ((RESERVED, CAPTURED, SHIP_CREATED), [CancelShipment(), Refund(amount=TOTAL, key=f"{ORDER}:cancel")]),
    ],
    ids=["submitted", "confirmed", "paid", "picking"],
)
def test_cancel_before_shipment_compensates_exactly_the_steps_done(replies, compensations):
    saga, before = run(*replies)
    saga, intents = advance(saga, CancelRequested(), now=T0, timeouts=TIMEOUTS)
    assert (saga.status, saga.reason) == ("cancelled", "customer_request")
    assert intents == compensations


@pytest.mark.parametrize(
    "answer",
    [SHIP_CANCELLED, ShipmentFailed(order_id=ORDER, reason="cancelled")],
    ids=["cancelled", "booking-refused"],
)
def test_the_stock_of_a_cancelled_parcel_goes_back_once_shipping_says_no_parcel_will_leave(answer):
    saga, _ = run(RESERVED, CAPTURED, SHIP_CREATED, CancelRequested())
    assert (saga.stock, saga.parcel) == ("reserved", "cancelling")
    saga, intents = advance(saga, answer, now=T0, timeouts=TIMEOUTS)
    assert intents == [Release()] and (saga.stock, saga.parcel) == ("releasing", "cancelled")
    saga, intents = advance(saga, SHIP_CANCELLED, now=T0, timeouts=TIMEOUTS)  # told again
    assert intents == []
    saga, _ = run(
        RESERVED,
        CAPTURED,
        SHIP_CREATED,
        CancelRequested(),
        answer,
        RELEASED,
        refunded(f"{ORDER}:cancel", TOTAL),
    )
    assert saga.status == "cancelled" and saga.deadline_at is None and saga.attention is None


@pytest.mark.parametrize("scan", ["picked_up", "in_transit"])
def test_a_parcel_the_carrier_took_before_the_cancel_is_committed_and_asked_back(scan):
    saga, _ = run(RESERVED, CAPTURED, SHIP_CREATED, CancelRequested())
    saga, intents = advance(saga, carrier(scan), now=T0, timeouts=TIMEOUTS)
    assert (
        intents[0] == Commit(warehouse="SH") and isinstance(intents[1], RaiseAttention) and len(intents) == 2
    )
    assert "SF1" in intents[1].detail and saga.attention == intents[1].detail
    assert (saga.status, saga.stock, saga.parcel) == ("cancelled", "committed", "left")
    saga, intents = advance(
        saga, carrier("delivered"), now=T0, timeouts=TIMEOUTS
    )  # later scans change nothing
    assert intents == [] and saga.status == "cancelled"
    saga, _ = advance(saga, refunded(f"{ORDER}:cancel", TOTAL), now=T0, timeouts=TIMEOUTS)
    assert saga.deadline_at is None  # nothing left to wait for: the refund is done, the stock committed


def test_a_parcel_that_left_then_came_back_while_the_cancel_was_pending_is_restocked():
    """Scans that arrive before shipping answered the cancel of the other parcel: SH picked up,
    then returned."""
    saga, _ = run(SPLIT, CAPTURED, booked("SH"), booked("BJ"), CancelRequested(), scan("SH", "picked_up"))
    assert saga.parcel == "cancelling", "BJ's cancel is not answered yet"
    saga, intents = advance(saga, scan("SH", "returned"), now=T0, timeouts=TIMEOUTS)
    assert intents == [Restock(items=[MUG[0]])], "its units are on the shelf again"
    saga, intents = advance(saga, scan("SH", "returned"), now=T0, timeouts=TIMEOUTS)
    assert intents == [], "told twice, restocked once"


def test_a_split_parcel_whose_first_news_after_the_cancel_is_its_return_is_committed_and_restocked():
    saga, _ = run(SPLIT, CAPTURED, booked("SH"), booked("BJ"), CancelRequested())
    saga, intents = advance(saga, scan("SH", "returned"), now=T0, timeouts=TIMEOUTS)
    assert Commit(warehouse="SH") in intents and Restock(items=[MUG[0]]) in intents
    assert not any(isinstance(i, RaiseAttention) for i in intents), "it came back: nothing for ops"
    saga, intents = advance(saga, scan("SH", "picked_up"), now=T0, timeouts=TIMEOUTS)
    assert intents == [], "an older scan moves it no more"


def test_an_unanswered_parcel_cancel_is_resent_with_the_other_compensations():
    saga, _ = run(RESERVED, CAPTURED, SHIP_CREATED, CancelRequested())
    saga, intents = advance(saga, DeadlineReached(), now=at(31), timeouts=TIMEOUTS)
    assert intents == [CancelShipment(), Refund(amount=TOTAL, key=f"{ORDER}:cancel")]


def test_cancel_racing_a_capture_in_flight_ends_with_one_refund():
    saga, _ = run(RESERVED)
    saga, first = advance(saga, CancelRequested(), now=T0, timeouts=TIMEOUTS)
    saga, second = advance(saga, CAPTURED, now=T0, timeouts=TIMEOUTS)
    saga, third = advance(saga, CAPTURED, now=T0, timeouts=TIMEOUTS)
    refunds = [i for i in first + second + third if isinstance(i, Refund)]
    assert refunds == [Refund(amount=TOTAL, key=f"{ORDER}:cancel")]
    assert saga.status == "cancelled"


@pytest.mark.parametrize("progress", ["picked_up", "in_transit", "delivered"])
def test_cancel_from_shipped_on_is_refused(progress):
    saga, _ = run(RESERVED, CAPTURED, SHIP_CREATED, carrier(progress))
    with pytest.raises(Refused, match="return"):
        advance(saga, CancelRequested(), now=T0, timeouts=TIMEOUTS)


def test_cancel_twice_is_one_cancellation():
    saga, _ = run(RESERVED, CancelRequested())
    again, intents = advance(saga, CancelRequested(), now=T0, timeouts=TIMEOUTS)
    assert intents == [] and again.status == "cancelled"


def test_address_change_follows_the_shipment_and_is_refused_after_shipping():
    saga, _ = run(RESERVED)
    assert advance(saga, AddressChangeRequested(), now=T0, timeouts=TIMEOUTS)[1] == []
    saga, _ = run(RESERVED, CAPTURED, SHIP_CREATED)
    assert advance(saga, AddressChangeRequested(), now=T0, timeouts=TIMEOUTS)[1] == [ChangeShipmentAddress()]
    saga, _ = run(RESERVED, CAPTURED, SHIP_CREATED, carrier("picked_up"))
    with pytest.raises(Refused):
        advance(saga, AddressChangeRequested(), now=T0, timeouts=TIMEOUTS)


def test_return_after_delivery_restocks_and_refunds_the_returned_amount():
    items = [LineItem(sku="SKU-RED-MUG", quantity=1)]
    saga, _ = run(RESERVED, CAPTURED, SHIP_CREATED, carrier("picked_up"), carrier("delivered"))
    with pytest.raises(Refused):
        advance(saga, ReturnRequested(items=items, amount=TOTAL + 1), now=T0, timeouts=TIMEOUTS)
    saga, intents = advance(
        saga, ReturnRequested(items=items, amount=Decimal("39.90")), now=T0, timeouts=TIMEOUTS
    )
    assert saga.status == "return_requested" and intents == [ExpectReturn(items=items)]
    back = ShipmentReturned(order_id=ORDER, shipment_id="shp-1", tracking_number="SF1", items=items, at=T0)
    saga, intents = advance(saga, back, now=T0, timeouts=TIMEOUTS)
    assert saga.status == "returned"
    assert intents == [Restock(items=items), Refund(amount=Decimal("39.90"), key=f"{ORDER}:return")]
    saga, _ = advance(saga, refunded(f"{ORDER}:return", Decimal("39.90")), now=T0, timeouts=TIMEOUTS)
    assert saga.deadline_at is None and saga.refunded == Decimal("39.90")


def test_return_before_delivery_is_refused():
    saga, _ = run(RESERVED, CAPTURED)
    with pytest.raises(Refused):
        advance(
            saga,
            ReturnRequested(items=[LineItem(sku="SKU-RED-MUG", quantity=1)], amount=Decimal("1")),
            now=T0,
            timeouts=TIMEOUTS,
        )


def test_carrier_news_never_goes_backwards_and_may_overtake_shipment_created():
    saga, intents = run(RESERVED, CAPTURED, carrier("in_transit"), SHIP_CREATED, carrier("picked_up"))
    assert saga.status == "in_transit"
    assert intents.count(Commit(warehouse="SH")) == 1


def test_stock_step_resends_then_gives_up_with_saga_timeout():
    saga, _ = run()
    saga, intents = advance(saga, DeadlineReached(), now=at(30), timeouts=TIMEOUTS)
    assert intents == [Reserve()] and saga.deadline_at == at(60)
    saga, intents = advance(saga, DeadlineReached(), now=at(60), timeouts=TIMEOUTS)
    assert intents[1:] == [Reserve()] and isinstance(intents[0], Warn)
    saga, intents = advance(saga, DeadlineReached(), now=at(90), timeouts=TIMEOUTS)
    assert (saga.status, saga.reason) == ("cancelled", "saga_timeout")
    assert intents == [Release()]


def test_unanswered_compensation_is_resent_then_marked_for_attention():
    saga, _ = run(RESERVED, CAPTURED, SHIP_FAILED)
    assert saga.waiting_for == "compensate"
    saga, intents = advance(saga, DeadlineReached(), now=at(30), timeouts=TIMEOUTS)
    assert intents == [Refund(amount=TOTAL, key=f"{ORDER}:cancel"), Release()]  # resent in reverse, same key
    saga, _ = advance(saga, RELEASED, now=at(31), timeouts=TIMEOUTS)
    saga, intents = advance(saga, DeadlineReached(), now=at(61), timeouts=TIMEOUTS)
    assert intents[1:] == [Refund(amount=TOTAL, key=f"{ORDER}:cancel")] and isinstance(intents[0], Warn)
    saga, intents = advance(saga, DeadlineReached(), now=at(91), timeouts=TIMEOUTS)
    assert len(intents) == 1 and isinstance(intents[0], RaiseAttention)
    assert saga.attention and saga.deadline_at is None and saga.status == "cancelled"


def test_compensations_answered_clear_the_deadline():
    saga, _ = run(RESERVED, CAPTURED, SHIP_FAILED, RELEASED, refunded(f"{ORDER}:cancel", TOTAL))
    assert saga.deadline_at is None and saga.unrefunded == 0 and saga.refunded == TOTAL


def test_the_same_refund_told_twice_counts_once():
    saga, _ = run(
        RESERVED,
        CAPTURED,
        SHIP_FAILED,
        refunded(f"{ORDER}:cancel", TOTAL),
        refunded(f"{ORDER}:cancel", TOTAL),
    )
    assert saga.refunded == TOTAL


def test_late_and_duplicate_replies_are_ignored_not_fatal():
    saga, intents = run(
        RESERVED, RESERVED, CAPTURED, RESERVED, DECLINED, SHIP_CREATED, SHIP_CREATED, SHIP_FAILED
    )
    assert saga.status == "picking"
    assert intents == [Reserve(), Capture(), BOOK]
    assert saga.ignored == 5


def test_saga_round_trips_through_its_stored_form():
    saga, _ = run(RESERVED, CAPTURED, SHIP_FAILED, refunded(f"{ORDER}:cancel", TOTAL))
    assert Saga.from_dict(saga.to_dict()) == saga


def test_every_reply_the_saga_follows_comes_from_its_table():
    from events.envelope import Command, Event
    from orders import saga as flow

    handled = {t for t in flow._HANDLERS if issubclass(t, Event | Command)}
    assert handled == set(flow.REPLIES)
    for step in flow.TABLE:
        assert step.success in flow.REPLIES and set(step.failures) <= flow.REPLIES


def test_the_table_is_walked_forward_and_undone_in_reverse():
    from orders import saga as flow

    saga, seen = run()
    for step in (step for step in flow.STEPS if step.command is not None):
        assert saga.waiting_for == step.wait and saga.status == step.waits_in
        saga, intents = advance(
            saga,
            {"reserve": RESERVED, "capture": CAPTURED, "ship": SHIP_CREATED}[step.name],
            now=T0,
            timeouts=TIMEOUTS,
        )
        assert saga.status == step.then
    saga, intents = advance(saga, CancelRequested(), now=T0, timeouts=TIMEOUTS)
    undo = [type(i) for i in intents]
    assert undo == [CancelShipment, Refund]  # the release waits for the parcel's cancel to be answered
    saga, intents = advance(saga, SHIP_CANCELLED, now=T0, timeouts=TIMEOUTS)
    assert intents == [Release()]


SPLIT = StockReserved(
    order_id=ORDER,
    allocations=[
        Allocation(warehouse="SH", sku="SKU-RED-MUG", quantity=1),
        Allocation(warehouse="BJ", sku="SKU-RED-MUG", quantity=1),
    ],
)


def run_from(saga, *replies):
    """Feed ``replies`` to ``saga`` in order; the last state and every intent asked for."""
    intents = []
    for k, reply in enumerate(replies):
        saga, more = advance(saga, reply, now=at(k), timeouts=TIMEOUTS)
        intents += more
    return saga, intents


def booked(warehouse: str) -> ShipmentCreated:
    return ShipmentCreated(
        order_id=ORDER,
        shipment_id=f"shp-{warehouse}",
        carrier="sf-express",
        tracking_number=f"T{warehouse}",
        warehouse=warehouse,
        parcel=warehouse,
        estimated_delivery=date(2026, 11, 27),
    )


def scan(warehouse: str, status: str) -> ShipmentUpdated:
    return ShipmentUpdated(
        order_id=ORDER,
        shipment_id=f"shp-{warehouse}",
        carrier="sf-express",
        tracking_number=f"T{warehouse}",
        status=status,
        at=T0,
        parcel=warehouse,
    )


def test_once_a_parcel_of_a_split_order_left_the_order_is_no_longer_cancelled():
    saga, _ = run(SPLIT, CAPTURED, booked("SH"), booked("BJ"), scan("SH", "picked_up"))
    assert saga.status == "picking"
    with pytest.raises(Refused, match="return"):
        advance(saga, CancelRequested(), now=T0, timeouts=TIMEOUTS)


def test_a_parcel_no_carrier_takes_cancels_the_order_and_its_other_parcel():
    failed = ShipmentFailed(order_id=ORDER, reason="no_carrier", parcel="BJ")
    saga, intents = run(SPLIT, CAPTURED, booked("SH"), failed)
    assert (saga.status, saga.reason) == ("cancelled", "shipment_failed")
    assert CancelShipment() in intents and Release() not in intents, "the stock waits for the parcel's cancel"
    saga, intents = advance(
        saga,
        ShipmentCancelled(order_id=ORDER, shipment_ids=["shp-SH"], parcels=["SH"]),
        now=T0,
        timeouts=TIMEOUTS,
    )
    assert intents == [Release()]


def test_a_saga_saved_before_parcels_follows_its_one_parcel():
    saga, _ = run(RESERVED, CAPTURED, SHIP_CREATED, carrier("picked_up"))
    old = saga.to_dict()
    del old["parcels"], old["prices"]
    restored = Saga.from_dict(old)
    assert [(p.name, p.leg) for p in restored.parcels] == [("SH", "left")]
    saga, intents = advance(restored, carrier("delivered"), now=T0, timeouts=TIMEOUTS)
    assert saga.status == "delivered" and intents == []


def test_a_return_of_items_from_two_parcels_restocks_each_once_and_refunds_once():
    saga, _ = run(SPLIT, CAPTURED, booked("SH"), booked("BJ"), *(scan(w, "delivered") for w in ("SH", "BJ")))
    assert saga.status == "delivered"
    mugs = [LineItem(sku="SKU-RED-MUG", quantity=2)]
    saga, _ = advance(saga, ReturnRequested(items=mugs, amount=Decimal("79.80")), now=T0, timeouts=TIMEOUTS)
    seen = []
    for warehouse in ("SH", "BJ", "BJ"):
        back = ShipmentReturned(
            order_id=ORDER,
            shipment_id=f"shp-{warehouse}",
            tracking_number=f"T{warehouse}",
            items=[LineItem(sku="SKU-RED-MUG", quantity=1)],
            at=T0,
        )
        saga, intents = advance(saga, back, now=T0, timeouts=TIMEOUTS)
        seen += intents
    assert saga.status == "returned"
    assert [type(i).__name__ for i in seen] == ["Restock", "Refund", "Restock"]


def replacement_booked(from_warehouse: str) -> ShipmentCreated:
    """SH+1, the parcel sent instead of the lost SH, booked from ``from_warehouse``."""
    return ShipmentCreated(
        order_id=ORDER,
        shipment_id="shp-SH+1",
        carrier="sf-express",
        tracking_number="TSH+1",
        warehouse=from_warehouse,
        parcel="SH+1",
        estimated_delivery=date(2026, 11, 28),
    )


def again(warehouse: str, status: str) -> ShipmentUpdated:
    return ShipmentUpdated(
        order_id=ORDER,
        shipment_id=f"shp-{warehouse}+1",
        carrier="sf-express",
        tracking_number=f"T{warehouse}+1",
        status=status,
        at=T0,
        parcel=f"{warehouse}+1",
    )


MUG = (LineItem(sku="SKU-RED-MUG", quantity=1),)
SH_LOST = (
    SPLIT,
    CAPTURED,
    booked("SH"),
    booked("BJ"),
    scan("SH", "picked_up"),
    scan("BJ", "picked_up"),
    scan("SH", "lost"),
)
"""A split order whose SH parcel the carrier lost, BJ's on its way."""
PRICES = (("SKU-RED-MUG", Decimal("39.90")),)


def test_a_lost_parcel_is_sent_again_from_stock_and_the_order_delivered_without_a_refund():
    saga, _ = run(
        SPLIT, CAPTURED, booked("SH"), booked("BJ"), scan("SH", "picked_up"), scan("BJ", "picked_up")
    )
    saga, intents = advance(saga, scan("SH", "lost"), now=T0, timeouts=TIMEOUTS)
    assert intents == [Reserve(parcel="SH+1", items=MUG)], "reserved again, not refunded"
    assert saga.waiting_for == "resend"
    saga, intents = advance(saga, DeadlineReached(), now=at(30), timeouts=TIMEOUTS)
    assert intents == [Reserve(parcel="SH+1", items=MUG)], "silence: asked again"
    spare = StockReserved(
        order_id=ORDER, parcel="SH+1", allocations=[Allocation(warehouse="BJ", sku="SKU-RED-MUG", quantity=1)]
    )
    saga, intents = advance(saga, spare, now=at(31), timeouts=TIMEOUTS)
    assert intents == [CreateShipment(warehouse="BJ", parcel="SH+1", items=MUG, replaces="SH")]
    saga, intents = advance(saga, spare, now=at(31), timeouts=TIMEOUTS)
    assert intents == [], "a resent reservation's answer books nothing twice"
    booked_again = replacement_booked(from_warehouse="BJ")
    saga, intents = advance(saga, booked_again, now=at(32), timeouts=TIMEOUTS)
    assert intents == [] and saga.waiting_for is None
    saga, intents = advance(saga, scan("BJ", "delivered"), now=at(33), timeouts=TIMEOUTS)
    assert saga.status == "shipped", "the parcel sent again is still on its way"
    saga, intents = advance(saga, again("SH", "picked_up"), now=at(34), timeouts=TIMEOUTS)
    assert intents == [Commit(warehouse="BJ", parcel="SH+1")], "its own units leave the shelf"
    saga, intents = advance(saga, again("SH", "delivered"), now=at(35), timeouts=TIMEOUTS)
    assert saga.status == "delivered" and saga.refunds == () and intents == []


def test_a_parcel_sent_again_from_a_warehouse_whose_own_parcel_waits_moves_only_its_own_units():
    """The replacement of SH's lost parcel is reserved at BJ, whose own parcel has not left. When
    the replacement leaves, only its units leave the shelf; when BJ's own parcel then finds no
    carrier, BJ's own units are released: the warehouse is not taken for gone because the
    replacement left from it."""
    spare = StockReserved(
        order_id=ORDER, parcel="SH+1", allocations=[Allocation(warehouse="BJ", sku="SKU-RED-MUG", quantity=1)]
    )
    saga, _ = run(
        SPLIT,
        CAPTURED,
        booked("SH"),
        scan("SH", "picked_up"),
        scan("SH", "lost"),
        spare,
        replacement_booked(from_warehouse="BJ"),
    )
    saga, intents = advance(saga, again("SH", "picked_up"), now=T0, timeouts=TIMEOUTS)
    assert intents == [Commit(warehouse="BJ", parcel="SH+1")], "not BJ's own units, still on the shelf"
    saga, intents = advance(
        saga, ShipmentFailed(order_id=ORDER, reason="no_carrier", parcel="BJ"), now=at(1), timeouts=TIMEOUTS
    )
    assert Release(warehouses=("BJ",)) in intents, intents


def test_a_lost_parcel_without_stock_to_send_again_is_refunded():
    saga, _ = run(
        *SH_LOST,
        prices=PRICES,
    )
    none = StockReservationFailed(
        order_id=ORDER, parcel="SH+1", shortages=[Shortage(sku="SKU-RED-MUG", quantity=1, available=0)]
    )
    saga, intents = advance(saga, none, now=T0, timeouts=TIMEOUTS)
    assert intents == [Refund(amount=Decimal("39.90"), key=f"{ORDER}:parcel:SH")]
    assert saga.waiting_for is None and saga.status == "shipped"
    saga, intents = advance(saga, scan("BJ", "delivered"), now=T0, timeouts=TIMEOUTS)
    assert saga.status == "delivered" and intents == []


def test_a_parcel_sent_again_that_no_carrier_takes_gives_its_units_back_until_inventory_answers():
    saga, _ = run(
        *SH_LOST,
        StockReserved(
            order_id=ORDER,
            parcel="SH+1",
            allocations=[Allocation(warehouse="BJ", sku="SKU-RED-MUG", quantity=1)],
        ),
        scan("BJ", "delivered"),
        prices=PRICES,
    )
    no_carrier = ShipmentFailed(order_id=ORDER, reason="no_carrier", parcel="SH+1")
    saga, intents = advance(saga, no_carrier, now=T0, timeouts=TIMEOUTS)
    release = Release(warehouses=("BJ",), parcel="SH+1")
    assert intents == [release, Refund(amount=Decimal("39.90"), key=f"{ORDER}:parcel:SH")]
    assert saga.status == "shipped" and saga.waiting_for == "resend", "not over while the units are held"
    saga, intents = advance(saga, DeadlineReached(), now=at(30), timeouts=TIMEOUTS)
    assert intents == [release], "silence: the release is asked again"
    saga, intents = advance(saga, no_carrier, now=at(31), timeouts=TIMEOUTS)
    assert intents == [], "the failure told twice releases and refunds nothing twice"
    released = StockReleased(order_id=ORDER, allocations=[], parcel="SH+1")
    saga, intents = advance(saga, released, now=at(32), timeouts=TIMEOUTS)
    assert (saga.status, saga.waiting_for, intents) == ("delivered", None, [])
    assert advance(saga, released, now=at(33), timeouts=TIMEOUTS)[1] == []


def test_a_parcel_sent_again_split_over_two_warehouses_releases_both_by_the_name_it_was_reserved_under():
    """Inventory reserved the replacement SH+1 in BJ and FRA: two legs, SH+1 and SH+1-FRA, whose
    units it knows as SH+1's. When no carrier takes them, each leg's release names SH+1 (not a
    name inventory never heard of), and each answer ends one leg."""
    split_again = StockReserved(
        order_id=ORDER,
        parcel="SH+1",
        allocations=[
            Allocation(warehouse="BJ", sku="SKU-RED-MUG", quantity=1),
            Allocation(warehouse="FRA", sku="SKU-RED-MUG", quantity=1),
        ],
    )
    saga, _ = run(*SH_LOST, split_again, scan("BJ", "delivered"), prices=PRICES)
    _, intents = run_from(
        saga,
        ShipmentFailed(order_id=ORDER, reason="no_carrier", parcel="SH+1"),
        ShipmentFailed(order_id=ORDER, reason="no_carrier", parcel="SH+1-FRA"),
    )
    releases = [i for i in intents if isinstance(i, Release)]
    assert releases == [
        Release(warehouses=("BJ",), parcel="SH+1"),
        Release(warehouses=("FRA",), parcel="SH+1"),
    ]
    released = StockReleased(order_id=ORDER, allocations=[], parcel="SH+1")
    saga, _ = run_from(
        saga, *[ShipmentFailed(order_id=ORDER, reason="no_carrier", parcel=n) for n in ("SH+1", "SH+1-FRA")]
    )
    saga, _ = advance(saga, released, now=at(1), timeouts=TIMEOUTS)
    assert saga.status != "delivered", "one leg's units are still held"
    saga, _ = advance(saga, released, now=at(2), timeouts=TIMEOUTS)
    assert saga.status == "delivered" and saga.waiting_for is None


def test_a_parcel_sent_again_that_is_cancelled_with_its_order_gives_its_own_units_back():
    """SH was lost and sent again from SH; then BJ's booking failed and the order is cancelled. The
    order's release names BJ only (SH's units left with the carrier), so the parcel sent again
    gives back what was reserved for it by its own release."""
    spare = StockReserved(
        order_id=ORDER, parcel="SH+1", allocations=[Allocation(warehouse="SH", sku="SKU-RED-MUG", quantity=1)]
    )
    booked_again = replacement_booked(from_warehouse="SH")
    saga, _ = run(
        SPLIT, CAPTURED, booked("SH"), scan("SH", "picked_up"), scan("SH", "lost"), spare, booked_again
    )
    saga, intents = advance(
        saga, ShipmentFailed(order_id=ORDER, reason="no_carrier", parcel="BJ"), now=T0, timeouts=TIMEOUTS
    )
    assert (saga.status, saga.reason) == ("cancelled", "shipment_failed") and CancelShipment() in intents
    cancelled = ShipmentCancelled(order_id=ORDER, shipment_ids=["shp-SH+1"], parcels=["SH+1"])
    saga, intents = advance(saga, cancelled, now=T0, timeouts=TIMEOUTS)
    assert Release(warehouses=("SH",), parcel="SH+1") in intents
    assert Release(warehouses=("BJ",)) in intents, "the order's own release leaves SH to its commit"
    saga, intents = advance(saga, DeadlineReached(), now=at(30), timeouts=TIMEOUTS)
    assert Release(warehouses=("SH",), parcel="SH+1") in intents, "asked again until answered"
    released = StockReleased(order_id=ORDER, allocations=[], parcel="SH+1")
    saga, _ = advance(saga, released, now=at(31), timeouts=TIMEOUTS)
    saga, intents = advance(saga, DeadlineReached(), now=at(61), timeouts=TIMEOUTS)
    assert Release(warehouses=("SH",), parcel="SH+1") not in intents


def test_a_parcel_sent_again_and_lost_too_is_refunded_and_not_sent_a_third_time():
    saga, _ = run(
        RESERVED,
        CAPTURED,
        SHIP_CREATED,
        carrier("picked_up"),
        carrier("lost"),
        StockReserved(order_id=ORDER, parcel="SH+1", allocations=RESERVED.allocations),
        prices=PRICES,
    )
    booked_again = replacement_booked(from_warehouse="SH")
    saga, _ = advance(saga, booked_again, now=T0, timeouts=TIMEOUTS)
    saga, _ = advance(saga, again("SH", "picked_up"), now=T0, timeouts=TIMEOUTS)
    saga, intents = advance(saga, again("SH", "lost"), now=T0, timeouts=TIMEOUTS)
    assert (saga.status, saga.reason) == ("cancelled", "delivery_failed")
    assert [type(i) for i in intents] == [Refund] and saga.unrefunded == 0


def test_a_parcel_delivered_before_its_order_is_cancelled_is_put_to_ops():
    """The carrier delivered SH before BJ's booking failed: the order is cancelled and refunded, and
    someone has to get the mug back."""
    saga, _ = run(SPLIT, CAPTURED, booked("SH"), scan("SH", "picked_up"), scan("SH", "delivered"))
    saga, intents = advance(
        saga, ShipmentFailed(order_id=ORDER, reason="no_carrier", parcel="BJ"), now=T0, timeouts=TIMEOUTS
    )
    assert (saga.status, saga.reason) == ("cancelled", "shipment_failed")
    assert any(isinstance(i, RaiseAttention) and "SH" in i.detail for i in intents) and saga.attention


# the customer pays: a wallet without a token (a QR code, a redirect) and its window

WINDOW_END = at(600)
ACTION = PaymentActionRequired(
    order_id=ORDER,
    payment_id="pay-1",
    method="alipay",
    action_type="qr_code",
    url="https://qr.alipay.com/bax01",
    expires_at=WINDOW_END,
    amount=TOTAL,
    currency="CNY",
)


def test_the_customer_is_waited_for_until_the_window_ends_without_resending():
    saga, intents = run(RESERVED, ACTION)
    assert saga.status == "confirmed" and saga.waiting_for == "customer"
    assert saga.action == {
        "type": "qr_code",
        "url": "https://qr.alipay.com/bax01",
        "expires_at": WINDOW_END.isoformat(),
    }
    assert saga.deadline_at == WINDOW_END + timedelta(seconds=TIMEOUTS.resend_seconds)
    assert intents == [Reserve(), Capture()]  # past the usual resend, warning and give-up: nothing resent
    saga, intents = advance(saga, CAPTURED, now=at(120), timeouts=TIMEOUTS)
    assert saga.status == "paid" and intents == [BOOK] and saga.waiting_for == "ship"


def test_the_window_passing_unpaid_cancels_with_payment_timeout_and_releases_stock():
    saga, _ = run(RESERVED, ACTION)
    early, intents = advance(saga, DeadlineReached(), now=at(100), timeouts=TIMEOUTS)
    assert early.status == "confirmed" and intents == []
    saga, intents = advance(saga, DeadlineReached(), now=saga.deadline_at, timeouts=TIMEOUTS)
    assert (saga.status, saga.reason) == ("cancelled", "payment_timeout")
    assert intents == [CancelPayment(), Release()], "the payment closed at its provider if payments has not"
    saga, intents = advance(
        saga, PaymentFailed(order_id=ORDER, reason="payment_timeout"), now=at(700), timeouts=TIMEOUTS
    )
    assert intents == [] and saga.reason == "payment_timeout"  # payments' own answer changes nothing more


def test_payments_telling_the_window_passed_cancels_with_payment_timeout():
    saga, intents = run(RESERVED, ACTION, PaymentFailed(order_id=ORDER, reason="payment_timeout"))
    assert (saga.status, saga.reason) == ("cancelled", "payment_timeout")
    assert intents[-1] == Release()


def test_a_cancel_while_the_customer_pays_closes_the_payment_at_its_provider():
    saga, _ = run(RESERVED, ACTION)
    saga, intents = advance(saga, CancelRequested(), now=at(60), timeouts=TIMEOUTS)
    assert (saga.status, saga.reason) == ("cancelled", "customer_request")
    assert intents == [CancelPayment(), Release()]
    closed, intents = advance(
        saga, PaymentFailed(order_id=ORDER, reason="cancelled"), now=at(61), timeouts=TIMEOUTS
    )
    assert intents == [] and closed.reason == "customer_request"
    paid_first, intents = advance(saga, CAPTURED, now=at(61), timeouts=TIMEOUTS)  # the customer was faster
    assert intents == [Refund(amount=TOTAL, key=f"{ORDER}:cancel")]


def test_money_that_arrives_after_the_window_is_refunded():
    saga, _ = run(RESERVED, ACTION)
    saga, _ = advance(saga, DeadlineReached(), now=saga.deadline_at, timeouts=TIMEOUTS)
    saga, intents = advance(saga, CAPTURED, now=at(700), timeouts=TIMEOUTS)
    assert saga.status == "cancelled" and intents == [Refund(amount=TOTAL, key=f"{ORDER}:cancel")]


def test_the_action_told_again_changes_nothing():
    saga, _ = run(RESERVED, ACTION)
    again, intents = advance(saga, ACTION, now=at(30), timeouts=TIMEOUTS)
    assert (
        intents == [] and again.deadline_at == saga.deadline_at and again.waiting_since == saga.waiting_since
    )
