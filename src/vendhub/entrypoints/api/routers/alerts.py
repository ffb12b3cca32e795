"""Alerts: machine events operators must see (failed vends, refunds, presence), acknowledged."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel

from vendhub.entrypoints.api.deps import ContainerDep, CurrentUser, require
from vendhub.entrypoints.api.replies import Page
from vendhub.services import alerts
from vendhub.services.alerts import AlertFilter, Severity
from vendhub.services.auth import Role
from vendhub.services.errors import InvalidRequest

router = APIRouter(prefix="/api/alerts", tags=["alerts"])

# Auditors read; everyone who runs the fleet may acknowledge.
AckUser = Annotated[dict[str, Any], Depends(require(Role.ADMIN, Role.TECHNICIAN, Role.INVENTORY))]


class AlertPublic(BaseModel):
    id: int
    machine_id: str
    kind: str
    severity: str
    status: str | None
    message: str
    details: dict[str, Any] | None
    created_at: datetime
    acknowledged_at: datetime | None
    acknowledged_by: str | None

    @classmethod
    def of(cls, row: dict[str, Any]) -> AlertPublic:
        return cls(kind=row["event_type"], **{k: v for k, v in row.items() if k != "event_type"})


class AlertPage(Page[AlertPublic]):
    """The common list envelope, plus how many alerts match the filter in all."""

    total: int


def _aware(*values: datetime | None) -> None:
    for value in values:
        if value is not None and value.tzinfo is None:
            raise InvalidRequest("since/until need a UTC offset, e.g. 2026-11-27T00:00:00Z")


@router.get("")
async def list_alerts(
    container: ContainerDep,
    _: CurrentUser,
    machine_id: Annotated[str | None, Query(max_length=50)] = None,
    kind: Annotated[str | None, Query(max_length=24)] = None,
    severity: Severity | None = None,
    state: Literal["open", "acknowledged", "all"] = "all",
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> AlertPage:
    """Newest first; without `severity`, info events (a machine coming online) are left out."""
    _aware(since, until)
    f = AlertFilter(machine_id, kind, severity, state, since, until)
    page = await alerts.list_alerts(container.ctx, f, limit, offset)
    items = [AlertPublic.of(r) for r in page.items]
    after = page.offset + len(items)
    return AlertPage(
        data=items,
        count=len(items),
        total=page.total,
        limit=page.limit,
        offset=page.offset,
        next_offset=after if after < page.total else None,
    )


@router.post("/{alert_id}/ack")
async def acknowledge(
    container: ContainerDep,
    user: AckUser,
    alert_id: Annotated[int, Path(ge=1, le=2**62)],
) -> AlertPublic:
    """Records who acknowledged and when; the first acknowledgement stays."""
    row = await alerts.acknowledge(container.ctx, alert_id, user.get("username") or user["sub"])
    return AlertPublic.of(row)
