"""The OpenAPI schema is complete, and the seed's request shapes parse (no I/O)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from vendhub.config import Settings
from vendhub.entrypoints.api.app import create_app
from vendhub.entrypoints.api.replies import Page
from vendhub.entrypoints.api.schemas import (
    MachineStatusChange,
    OrderCreate,
    SlotAssign,
    StockUpdate,
)
from vendhub.services.stock import ChangeType
from vendhub.services.views import Slice, Window


def _spec(tmp_path: Path) -> dict[str, Any]:
    settings = Settings(_env_file=None, database_url=f"sqlite:///{tmp_path / 'x.db'}")  # type: ignore[call-arg]
    spec: dict[str, Any] = create_app(settings, workers=False).openapi()
    return spec


def test_every_json_endpoint_declares_its_response_schema(tmp_path: Path) -> None:
    untyped = []
    for path, operations in _spec(tmp_path)["paths"].items():
        for method, op in operations.items():
            code = next(c for c in ("200", "201", "204") if c in op["responses"])
            content = op["responses"][code].get("content", {})
            if code == "204" or "text/plain" in content or "text/event-stream" in content:
                continue
            schema = content.get("application/json", {}).get("schema", {})
            if not schema.get("$ref"):  # a named model, not a bare dict or list
                untyped.append(f"{method.upper()} {path}")
    assert untyped == []


def test_every_list_endpoint_takes_limit_and_offset(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    schemas = spec["components"]["schemas"]
    unpaged = []
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            ref = (
                op["responses"]
                .get("200", {})
                .get("content", {})
                .get("application/json", {})
                .get("schema", {})
                .get("$ref", "")
            )
            fields = schemas.get(ref.rsplit("/", 1)[-1], {}).get("properties", {})
            if "data" in fields and fields["data"].get("type") == "array":
                params = {p["name"] for p in op.get("parameters", [])}
                if not {"limit", "offset"} <= params:
                    unpaged.append(f"{method.upper()} {path}")
    assert unpaged == []


@pytest.mark.parametrize(
    ("raw", "slot_id", "method"),
    [
        ({"slot_id": 3, "payment_method": "QRIS"}, "3", "qris"),
        ({"slot_id": "01JD7", "payment_method": "midtrans"}, "01JD7", "snap"),
        ({"slot_id": "2", "payment_method": " va "}, "2", "va"),
    ],
)
def test_seed_order_bodies_parse(raw: dict[str, Any], slot_id: str, method: str) -> None:
    order = OrderCreate.model_validate(raw)
    assert (order.slot_id, order.payment_method) == (slot_id, method)


@pytest.mark.parametrize(
    "raw",
    [
        {"slot_id": True},
        {"slot_id": 1.0},
        {"slot_id": 1, "payment_method": "cash"},
        {"slot_id": 1, "payment_method": 7},
        {"slot_id": 1, "extra": 1},
    ],
)
def test_other_order_bodies_are_refused(raw: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        OrderCreate.model_validate(raw)


def test_seed_stock_quantity_is_a_change_except_for_an_audit_where_it_is_the_count() -> None:
    restock = StockUpdate.model_validate({"slot_id": 4, "quantity": 3})
    assert (restock.slot_ref, restock.change_type, restock.delta, restock.count) == (
        "4",
        ChangeType.RESTOCK,
        3,
        None,
    )
    audit = StockUpdate.model_validate({"slot_number": 2, "quantity": 7, "change_type": "AUDIT"})
    assert (audit.slot_ref, audit.delta, audit.count) == (2, None, 7)


def test_seed_machine_states_and_slot_refs() -> None:
    words = ("active", "Inactive", "maintenance", "ONLINE")
    states = [MachineStatusChange.model_validate({"status": w}).status.value for w in words]
    assert states == ["ONLINE", "OFFLINE", "MAINTENANCE", "ONLINE"]
    assign = SlotAssign.model_validate({"slot_id": 5, "product_id": 12})
    assert (assign.slot_ref, assign.product_id) == ("5", "12")
    with pytest.raises(ValidationError):
        SlotAssign.model_validate({"slot_id": 5, "slot_number": 5, "product_id": "p"})


def test_a_page_says_where_the_next_one_starts_only_when_there_is_one() -> None:
    window = Window(limit=2, offset=4)
    full = Page[int].of(Slice.cut(list(range(10)), window))
    assert (full.data, full.count, full.next_offset) == ([4, 5], 2, 6)
    last = Page[int].of(Slice.cut(list(range(5)), window))
    assert (last.data, last.count, last.next_offset) == ([4], 1, None)
