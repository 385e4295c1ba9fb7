import pytest

from events.types import ShipmentStatus as St
from shipping.domain import NoCarrier, accepts, choose_carrier, next_step, tracking_number


def test_carrier_choice():
    assert choose_carrier("CN", "CN").code == "sf-express"
    assert choose_carrier("CN", "US").code == "ups"
    assert choose_carrier("CN", "JP").code == "dhl"
    with pytest.raises(NoCarrier):
        choose_carrier("CN", "AQ")


def test_tracking_numbers_are_unique_per_booking_and_prefixed():
    carrier = choose_carrier("CN", "CN")
    numbers = {tracking_number(carrier, f"ord_{n}:WH-SH") for n in range(1000)}
    assert len(numbers) == 1000 and all(n.startswith("SF") for n in numbers)
    assert tracking_number(carrier, "ord_1:WH-SH") == tracking_number(carrier, "ord_1:WH-SH")


def test_progress_never_goes_backwards_and_returns_need_to_be_expected():
    assert accepts(St.CREATED, St.IN_TRANSIT, return_expected=False)
    assert not accepts(St.DELIVERED, St.PICKED_UP, return_expected=False)
    assert not accepts(St.DELIVERED, St.RETURNED, return_expected=False)
    assert accepts(St.DELIVERED, St.RETURNED, return_expected=True)
    assert accepts(St.EXCEPTION, St.DELIVERED, return_expected=False)
    assert next_step(St.CREATED) == St.PICKED_UP and next_step(St.DELIVERED) is None


def test_a_parcel_the_carrier_had_may_come_back_or_be_lost_and_then_never_moves():
    assert accepts(St.IN_TRANSIT, St.RETURNED, return_expected=False)  # sent back undelivered
    assert accepts(St.EXCEPTION, St.LOST, return_expected=False)
    assert not accepts(St.CREATED, St.LOST, return_expected=False)  # the carrier never had it
    assert not accepts(St.DELIVERED, St.LOST, return_expected=False)
    for ended in (St.RETURNED, St.LOST):
        assert not any(accepts(ended, s, return_expected=True) for s in St)
