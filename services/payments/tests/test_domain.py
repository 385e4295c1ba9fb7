from decimal import Decimal

import pytest

from payments.domain import RefundRefused, decide_refund, mask_token


def test_full_refund_when_no_amount_given():
    d = decide_refund(captured=Decimal("10.00"), refunded=Decimal("0"), requested=None)
    assert (d.amount, d.refunded_total, d.status) == (Decimal("10.00"), Decimal("10.00"), "refunded")


def test_partial_then_rest():
    d = decide_refund(captured=Decimal("10.00"), refunded=Decimal("0"), requested=Decimal("4.00"))
    assert d.status == "partially_refunded"
    d = decide_refund(captured=Decimal("10.00"), refunded=d.refunded_total, requested=None)
    assert (d.amount, d.status) == (Decimal("6.00"), "refunded")


@pytest.mark.parametrize("requested", [Decimal("10.01"), Decimal("0"), Decimal("-1")])
def test_never_more_than_captured_and_never_nothing(requested):
    with pytest.raises(RefundRefused):
        decide_refund(captured=Decimal("10.00"), refunded=Decimal("0"), requested=requested)


def test_nothing_left_to_refund():
    with pytest.raises(RefundRefused):
        decide_refund(captured=Decimal("10.00"), refunded=Decimal("10.00"), requested=None)


def test_token_is_masked():
    assert mask_token("tok_ok") == "tok_***"
    assert "secret" not in mask_token("secret")
