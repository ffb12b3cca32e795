"""Order and unit lifecycles, payment status mapping, signatures, money."""

from __future__ import annotations

import hashlib
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vendhub.domain.model import (
    FINAL_ORDER_STATUSES,
    ORDER_TRANSITIONS,
    IllegalTransition,
    OrderStatus,
    UnitStatus,
    check_order_transition,
    check_unit_transition,
    order_outcome,
)
from vendhub.domain.payments import (
    PaymentStatus,
    format_rupiah,
    map_midtrans_status,
    midtrans_signature,
    parse_rupiah,
    signature_valid,
)


def test_seed_happy_path_is_a_legal_sequence_of_transitions() -> None:
    path = [OrderStatus.PENDING, OrderStatus.PAID, OrderStatus.DISPENSING, OrderStatus.COMPLETED]
    for current, new in itertools.pairwise(path):
        check_order_transition(current, new)


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (OrderStatus.PAID, OrderStatus.PENDING),  # a late `pending` webhook cannot un-pay
        (OrderStatus.COMPLETED, OrderStatus.FAILED),
        (OrderStatus.EXPIRED, OrderStatus.PAID),  # late payments are refunded, not applied
        (OrderStatus.CANCELLED, OrderStatus.PAID),
        (OrderStatus.PENDING, OrderStatus.COMPLETED),
        (OrderStatus.PAID, OrderStatus.CANCELLED),
    ],
)
def test_illegal_order_transitions_raise(current: OrderStatus, new: OrderStatus) -> None:
    with pytest.raises(IllegalTransition, match=f"order cannot go from {current} to {new}"):
        check_order_transition(current, new)


def test_final_statuses_have_no_way_out_except_failed_to_refunded() -> None:
    for status in FINAL_ORDER_STATUSES:
        allowed = ORDER_TRANSITIONS[status]
        assert allowed <= {OrderStatus.REFUNDED}, status


def test_a_settled_unit_can_never_change_again() -> None:
    for settled in (UnitStatus.DROPPED, UnitStatus.FAILED):
        for new in UnitStatus:
            with pytest.raises(IllegalTransition, match=f"unit cannot go from {settled} to"):
                check_unit_transition(settled, new)


@given(st.lists(st.sampled_from(list(UnitStatus)), min_size=1, max_size=12))
def test_order_outcome_waits_for_every_unit(units: list[UnitStatus]) -> None:
    outcome = order_outcome(units)
    if any(u in (UnitStatus.QUEUED, UnitStatus.IN_FLIGHT) for u in units):
        assert outcome is None
    elif all(u is UnitStatus.DROPPED for u in units):
        assert outcome is OrderStatus.COMPLETED
    else:
        assert outcome is OrderStatus.FAILED


def test_an_order_without_units_has_no_outcome() -> None:
    assert order_outcome([]) is None


@pytest.mark.parametrize(
    ("status", "fraud", "expected"),
    [
        ("settlement", None, PaymentStatus.PAID),
        ("capture", "accept", PaymentStatus.PAID),
        ("capture", "challenge", PaymentStatus.PENDING),
        ("capture", "deny", PaymentStatus.FAILED),
        ("pending", None, PaymentStatus.PENDING),
        ("deny", None, PaymentStatus.FAILED),
        ("cancel", None, PaymentStatus.FAILED),
        ("failure", None, PaymentStatus.FAILED),
        ("expire", None, PaymentStatus.EXPIRED),
        ("refund", None, PaymentStatus.REFUNDED),
        ("partial_refund", None, PaymentStatus.REFUNDED),
        ("something_new", None, None),
    ],
)
def test_midtrans_statuses_map_to_normalised_ones(
    status: str, fraud: str | None, expected: PaymentStatus | None
) -> None:
    assert map_midtrans_status(status, fraud) is expected


def test_signature_is_sha512_of_the_raw_strings_as_midtrans_documents() -> None:
    raw = "ORD-1" + "200" + "15000.00" + "server-key"
    assert (
        midtrans_signature("ORD-1", "200", "15000.00", "server-key")
        == hashlib.sha512(raw.encode()).hexdigest()
    )


def test_signature_over_a_reformatted_amount_does_not_verify() -> None:
    good = midtrans_signature("ORD-1", "200", "15000.00", "key")
    assert signature_valid("ORD-1", "200", "15000.00", "key", good)
    assert not signature_valid("ORD-1", "200", "15000", "key", good)
    assert not signature_valid("ORD-1", "200", "15000.00", "other-key", good)
    assert not signature_valid("ORD-1", "200", "15000.00", "key", "")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("15000.00", 15000),
        ("15000", 15000),
        ("0.00", 0),
        ("15000.50", None),
        ("abc", None),
        ("-5.00", None),
        ("NaN", None),
        ("Infinity", None),
    ],
)
def test_gateway_amounts_parse_to_whole_rupiah_or_nothing(text: str, expected: int | None) -> None:
    assert parse_rupiah(text) == expected


@given(st.integers(min_value=0, max_value=10**12))
def test_formatted_amounts_parse_back_to_the_same_rupiah(amount: int) -> None:
    assert parse_rupiah(format_rupiah(amount)) == amount


def test_only_closed_unpaid_orders_can_be_revived_by_a_late_payment() -> None:
    from vendhub.domain.model import check_late_payment_revival

    assert check_late_payment_revival(OrderStatus.EXPIRED) is OrderStatus.PAID
    assert check_late_payment_revival(OrderStatus.CANCELLED) is OrderStatus.PAID
    for status in (OrderStatus.COMPLETED, OrderStatus.FAILED, OrderStatus.REFUNDED):
        with pytest.raises(IllegalTransition, match=f"cannot reopen an order that is {status}"):
            check_late_payment_revival(status)


def test_refund_ledger_statuses_move_only_along_their_table() -> None:
    from vendhub.domain.model import REFUND_TRANSITIONS, RefundStatus, check_refund_transition

    check_refund_transition(RefundStatus.PENDING, RefundStatus.HELD)
    check_refund_transition(RefundStatus.HELD, RefundStatus.PENDING)
    check_refund_transition(RefundStatus.HELD, RefundStatus.CANCELLED)
    assert REFUND_TRANSITIONS[RefundStatus.SUCCEEDED] == frozenset()
    for current, new in [
        (RefundStatus.SUCCEEDED, RefundStatus.PENDING),
        (RefundStatus.CANCELLED, RefundStatus.PENDING),
        (RefundStatus.PENDING, RefundStatus.PENDING),
    ]:
        with pytest.raises(IllegalTransition):
            check_refund_transition(current, new)


def test_only_a_failed_unit_can_be_corrected_by_a_late_drop() -> None:
    from vendhub.domain.model import check_late_drop

    assert check_late_drop(UnitStatus.FAILED) is UnitStatus.DROPPED
    for status in (UnitStatus.QUEUED, UnitStatus.IN_FLIGHT, UnitStatus.DROPPED):
        with pytest.raises(IllegalTransition):
            check_late_drop(status)


@given(
    paid=st.integers(0, 10**9),
    kept=st.integers(0, 10**9),
    in_play=st.integers(0, 10**9),
    refunded=st.integers(0, 10**9),
)
def test_refund_owed_is_what_was_paid_and_neither_kept_in_play_nor_returned(
    paid: int, kept: int, in_play: int, refunded: int
) -> None:
    from vendhub.domain.model import refund_owed

    owed = refund_owed(paid, kept, in_play, refunded)
    assert owed >= 0
    assert owed == 0 or owed + kept + in_play + refunded == paid
