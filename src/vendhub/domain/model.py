"""Order and dispense lifecycles as explicit transition tables."""

from __future__ import annotations

from enum import StrEnum


class DomainError(Exception):
    """A rule of the business was broken; the message says which."""

    code = "domain_error"


class IllegalTransition(DomainError):
    code = "illegal_transition"


class OutOfStock(DomainError):
    code = "out_of_stock"


class OrderStatus(StrEnum):
    PENDING = "PENDING"
    PAID = "PAID"
    PENDING_DISPENSE = "PENDING_DISPENSE"
    DISPENSING = "DISPENSING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    REFUNDED = "REFUNDED"
    EXPIRED = "EXPIRED"
    CANCELLED = "CANCELLED"


ORDER_TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    OrderStatus.PENDING: frozenset({OrderStatus.PAID, OrderStatus.EXPIRED, OrderStatus.CANCELLED}),
    OrderStatus.PAID: frozenset(
        {OrderStatus.DISPENSING, OrderStatus.PENDING_DISPENSE, OrderStatus.FAILED}
    ),
    OrderStatus.PENDING_DISPENSE: frozenset({OrderStatus.DISPENSING, OrderStatus.FAILED}),
    OrderStatus.DISPENSING: frozenset(
        {OrderStatus.COMPLETED, OrderStatus.FAILED, OrderStatus.PENDING_DISPENSE}
    ),
    OrderStatus.FAILED: frozenset({OrderStatus.REFUNDED}),
    OrderStatus.COMPLETED: frozenset(),
    OrderStatus.REFUNDED: frozenset(),
    OrderStatus.EXPIRED: frozenset(),
    OrderStatus.CANCELLED: frozenset(),
}

FINAL_ORDER_STATUSES = frozenset(s for s, nxt in ORDER_TRANSITIONS.items() if not nxt) | {
    OrderStatus.FAILED
}
# Orders holding a stock reservation that has not yet been turned into a drop or released.
UNPAID_STATUSES = frozenset({OrderStatus.PENDING})


def check_order_transition(current: OrderStatus, new: OrderStatus) -> None:
    if new not in ORDER_TRANSITIONS[current]:
        raise IllegalTransition(f"order cannot go from {current} to {new}")


# Money that arrives after an unpaid order closed may revive it, if the operator chose to
# dispense late payments (LATE_PAYMENT_POLICY=dispense) and the stock is still there. Kept out
# of ORDER_TRANSITIONS so no other path can reopen a closed order.
LATE_PAYMENT_REVIVAL: dict[OrderStatus, OrderStatus] = {
    OrderStatus.EXPIRED: OrderStatus.PAID,
    OrderStatus.CANCELLED: OrderStatus.PAID,
}


def check_late_payment_revival(current: OrderStatus) -> OrderStatus:
    if current not in LATE_PAYMENT_REVIVAL:
        raise IllegalTransition(f"a late payment cannot reopen an order that is {current}")
    return LATE_PAYMENT_REVIVAL[current]


def can_transition(current: OrderStatus, new: OrderStatus) -> bool:
    return new in ORDER_TRANSITIONS[current]


class UnitStatus(StrEnum):
    """One physical unit to dispense (a row of `dispenses`)."""

    QUEUED = "QUEUED"  # paid, waiting for its turn on the machine
    IN_FLIGHT = "IN_FLIGHT"  # command written to the outbox; no result yet
    DROPPED = "DROPPED"  # success && dropDetected
    FAILED = "FAILED"  # any other outcome, or given up


class UnitFailure(StrEnum):
    """Why the backend failed a unit itself (a device's own codes are protocol ResultError)."""

    NO_RESULT = "NO_RESULT"  # sent, no result by expiresAt + timeoutMs + grace
    EXPIRED = "EXPIRED"  # never sent before its expiresAt (machine away)
    UNSPECIFIED = "FAILED"  # a failed result that carried no error code


UNIT_TRANSITIONS: dict[UnitStatus, frozenset[UnitStatus]] = {
    UnitStatus.QUEUED: frozenset({UnitStatus.IN_FLIGHT, UnitStatus.FAILED}),
    UnitStatus.IN_FLIGHT: frozenset({UnitStatus.DROPPED, UnitStatus.FAILED}),
    UnitStatus.DROPPED: frozenset(),
    UnitStatus.FAILED: frozenset(),
}


def check_unit_transition(current: UnitStatus, new: UnitStatus) -> None:
    if new not in UNIT_TRANSITIONS[current]:
        raise IllegalTransition(f"dispense unit cannot go from {current} to {new}")


def order_outcome(unit_statuses: list[UnitStatus]) -> OrderStatus | None:
    """The order's final status once every unit is settled, else None (still dispensing)."""
    if not unit_statuses or any(
        s in (UnitStatus.QUEUED, UnitStatus.IN_FLIGHT) for s in unit_statuses
    ):
        return None
    if all(s is UnitStatus.DROPPED for s in unit_statuses):
        return OrderStatus.COMPLETED
    return OrderStatus.FAILED


# A "dropped" result for a unit we had given up on: the machine's sensor saw it fall, so the
# unit counts as sold after all (its refund is held for an operator). Kept out of
# UNIT_TRANSITIONS so no other path can turn a failed unit into a sale.
LATE_DROP_CORRECTION: dict[UnitStatus, UnitStatus] = {UnitStatus.FAILED: UnitStatus.DROPPED}
# ... and an order that failed only because of that unit completed after all.
LATE_DROP_ORDER_CORRECTION: dict[OrderStatus, OrderStatus] = {
    OrderStatus.FAILED: OrderStatus.COMPLETED
}


def check_late_drop(current: UnitStatus) -> UnitStatus:
    if current not in LATE_DROP_CORRECTION:
        raise IllegalTransition(f"a late drop cannot correct a unit that is {current}")
    return LATE_DROP_CORRECTION[current]


class RefundStatus(StrEnum):
    """One row of the refund ledger (`refunds`)."""

    PENDING = "PENDING"  # owed; the payment jobs pay it out
    SUCCEEDED = "SUCCEEDED"  # the money went back (ours, or made at the gateway)
    FAILED = "FAILED"  # refused REFUND_MAX_ATTEMPTS times; a human pays it (manual refund)
    HELD = "HELD"  # the machine reported the unit dropped after all; an operator decides
    CANCELLED = "CANCELLED"  # not owed after all (operator, or paid another way)


REFUND_TRANSITIONS: dict[RefundStatus, frozenset[RefundStatus]] = {
    RefundStatus.PENDING: frozenset(
        {RefundStatus.SUCCEEDED, RefundStatus.FAILED, RefundStatus.HELD, RefundStatus.CANCELLED}
    ),
    # A refused refund may still be confirmed by the gateway, held by a late drop, or tried
    # again by an operator (only while the ledger still owes its amount).
    RefundStatus.FAILED: frozenset(
        {RefundStatus.SUCCEEDED, RefundStatus.HELD, RefundStatus.PENDING}
    ),
    # An attempt already in flight when the hold came may still succeed.
    RefundStatus.HELD: frozenset(
        {RefundStatus.PENDING, RefundStatus.CANCELLED, RefundStatus.SUCCEEDED}
    ),
    RefundStatus.SUCCEEDED: frozenset(),
    # The gateway's word that money went back is a fact, whatever we had decided meanwhile.
    RefundStatus.CANCELLED: frozenset({RefundStatus.SUCCEEDED}),
}


def check_refund_transition(current: RefundStatus, new: RefundStatus) -> None:
    if new not in REFUND_TRANSITIONS[current]:
        raise IllegalTransition(f"refund cannot go from {current} to {new}")


def refund_owed(paid: int, kept: int, in_play: int, refunded: int) -> int:
    """What the customer is still owed: paid, less what dropped (kept), what may still drop
    (in play) and what already went back. Never negative: over-refunding owes nothing."""
    return max(0, paid - kept - in_play - refunded)
