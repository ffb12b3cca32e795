"""Finance: the sales summary operators reconcile against the gateway's settlement report."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from vendhub.entrypoints.api.deps import CtxDep, CurrentUser
from vendhub.entrypoints.api.replies import FinanceSummary
from vendhub.entrypoints.api.schemas import SafeDatetime
from vendhub.services import finance
from vendhub.services.errors import InvalidRequest

router = APIRouter(prefix="/api/finance", tags=["finance"])


@router.get("/summary")
async def summary(
    ctx: CtxDep,
    _: CurrentUser,
    machine_id: str | None = None,
    start: Annotated[SafeDatetime | None, Query(alias="from")] = None,
    end: Annotated[SafeDatetime | None, Query(alias="to")] = None,
) -> FinanceSummary:
    """Payments received in [from, to): gross, refunded, net, units per product, failure rate."""
    for value in (start, end):
        if value is not None and value.tzinfo is None:
            raise InvalidRequest("from/to need a UTC offset, e.g. 2026-11-27T00:00:00Z")
    if start is not None and end is not None and end <= start:
        raise InvalidRequest("'to' must be after 'from'")
    return FinanceSummary.model_validate(await finance.summary(ctx, machine_id, start, end))
