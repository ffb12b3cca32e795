"""Operator console: orders, alerts, refunds and finance."""

from __future__ import annotations

import csv
import io
from datetime import date, datetime, timedelta
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from vendhub.domain.model import OrderStatus
from vendhub.entrypoints.api.deps import ContainerDep
from vendhub.entrypoints.web.charts import bar_chart
from vendhub.entrypoints.web.console import act, page
from vendhub.entrypoints.web.render import Pages, local_time, page_numbers
from vendhub.entrypoints.web.session import Operator, checked_form, require_role
from vendhub.services import alerts, catalog, orders, overview, refunds
from vendhub.services.alerts import AlertFilter, Severity
from vendhub.services.auth import Role

router = APIRouter(prefix="/console", include_in_schema=False)
PER_PAGE = 25
CSV_MAX_ROWS = 10_000


def _day(raw: str | None) -> date | None:
    if not raw:
        return None
    try:
        return date.fromisoformat(raw[:10])
    except ValueError:
        return None


def _offset(request: Request) -> int:
    raw = request.query_params.get("page", "1")
    number = int(raw) if raw.isdigit() and len(raw) < 7 else 1
    return (max(1, number) - 1) * PER_PAGE


def _order_query(request: Request, tz: ZoneInfo) -> tuple[overview.OrderQuery, dict[str, str]]:
    q = request.query_params
    status = q.get("status") or None
    if status not in {s.value for s in OrderStatus}:
        status = None
    first, last = _day(q.get("from")), _day(q.get("to"))
    start = overview.local_day_bounds(tz, first, first)[0] if first else None
    end = overview.local_day_bounds(tz, last, last)[1] if last else None
    machine = (q.get("machine") or "")[:50] or None
    shown = {
        "machine": machine or "",
        "status": status or "",
        "from": first.isoformat() if first else "",
        "to": last.isoformat() if last else "",
    }
    return overview.OrderQuery(machine, status, start, end), shown


@router.get("/orders", response_class=HTMLResponse)
async def orders_page(
    request: Request, user: Operator, container: ContainerDep, pages: Pages
) -> HTMLResponse:
    tz = ZoneInfo(container.settings.display_tz)
    query, shown = _order_query(request, tz)
    offset = _offset(request)
    rows, total = await overview.order_page(container.ctx, query, PER_PAGE, offset)
    return page(
        pages,
        request,
        "orders.html",
        user,
        "orders",
        orders=rows,
        filters=shown,
        statuses=[s.value for s in OrderStatus],
        machines=await catalog.list_machines(container.ctx),
        paging=page_numbers(total, PER_PAGE, offset),
        query=urlencode({k: v for k, v in shown.items() if v}),
    )


@router.get("/orders.csv")
async def orders_csv(request: Request, user: Operator, container: ContainerDep) -> Response:
    tz = ZoneInfo(container.settings.display_tz)
    query, _ = _order_query(request, tz)
    rows, _total = await overview.order_page(container.ctx, query, CSV_MAX_ROWS, 0)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        [
            "order_id",
            "machine_id",
            "status",
            "units",
            "total_amount",
            "refunded_amount",
            f"created_at ({tz.key})",
            f"paid_at ({tz.key})",
        ]
    )
    for r in rows:
        writer.writerow(
            [
                r["id"],
                r["machine_id"],
                r["status"],
                r["units"],
                r["total_amount"],
                r["refunded_amount"],
                local_time(r["created_at"], tz, "%Y-%m-%d %H:%M:%S"),
                local_time(r["paid_at"], tz, "%Y-%m-%d %H:%M:%S") if r["paid_at"] else "",
            ]
        )
    return Response(
        out.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="orders.csv"'},
    )


@router.get("/orders/{order_id}", response_class=HTMLResponse)
async def order_page(
    request: Request, order_id: str, user: Operator, container: ContainerDep, pages: Pages
) -> HTMLResponse:
    order = await orders.get_order(container.ctx, order_id)
    return page(pages, request, "order.html", user, "orders", order=order)


@router.post("/orders/{order_id}/refund")
async def refund_order(
    request: Request, order_id: str, user: Operator, container: ContainerDep
) -> Response:
    require_role(user, Role.ADMIN)
    await checked_form(request, user)
    work = refunds.request_manual_refund(
        container.ctx, container.payments, container.payment_policy, order_id
    )
    return await act(f"/console/orders/{quote(order_id)}", work, "manual refund requested")


@router.get("/alerts", response_class=HTMLResponse)
async def alerts_page(
    request: Request, user: Operator, container: ContainerDep, pages: Pages
) -> HTMLResponse:
    q = request.query_params
    severity = q.get("severity") or None
    state = q.get("state") or "open"
    if state not in ("open", "acknowledged", "all"):
        state = "open"
    f = AlertFilter(
        machine_id=(q.get("machine") or "")[:50] or None,
        kind=(q.get("kind") or "")[:24] or None,
        severity=Severity(severity) if severity in {s.value for s in Severity} else None,
        state=state,
    )
    offset = _offset(request)
    found = await alerts.list_alerts(container.ctx, f, PER_PAGE, offset)
    shown = {
        "machine": f.machine_id or "",
        "kind": f.kind or "",
        "severity": f.severity.value if f.severity else "",
        "state": state,
    }
    return page(
        pages,
        request,
        "alerts.html",
        user,
        "alerts",
        alerts=found.items,
        filters=shown,
        machines=await catalog.list_machines(container.ctx),
        paging=page_numbers(found.total, PER_PAGE, offset),
        query=urlencode({k: v for k, v in shown.items() if v}),
        back=str(request.url.path) + ("?" + request.url.query if request.url.query else ""),
    )


@router.post("/alerts/{alert_id}/ack")
async def ack_alert(
    request: Request, alert_id: int, user: Operator, container: ContainerDep
) -> Response:
    require_role(user, Role.ADMIN, Role.TECHNICIAN, Role.INVENTORY)
    values = await checked_form(request, user)
    back = values.get("back") or "/console/alerts"
    if not back.startswith("/console/alerts"):
        back = "/console/alerts"
    who = user.get("username") or user["sub"]
    return await act(back, alerts.acknowledge(container.ctx, alert_id, who), "acknowledged")


@router.get("/refunds", response_class=HTMLResponse)
async def refunds_page(
    request: Request, user: Operator, container: ContainerDep, pages: Pages
) -> HTMLResponse:
    return page(
        pages, request, "refunds.html", user, "refunds", refunds=await refunds.owed(container.ctx)
    )


@router.post("/refunds/{refund_id}/retry")
async def retry_refund(
    request: Request, refund_id: str, user: Operator, container: ContainerDep
) -> Response:
    require_role(user, Role.ADMIN)
    await checked_form(request, user)
    work = refunds.retry_now(container.ctx, container.payments, container.payment_policy, refund_id)
    return await act("/console/refunds", work, "refund retried")


def _period(request: Request, tz: ZoneInfo, now: datetime) -> tuple[date, date]:
    today = now.astimezone(tz).date()
    last = _day(request.query_params.get("to")) or today
    first = _day(request.query_params.get("from")) or last - timedelta(days=13)
    if first > last:
        first, last = last, first
    # A bounded window keeps one page's query small.
    return max(first, last - timedelta(days=366)), last


@router.get("/finance", response_class=HTMLResponse)
async def finance_page(
    request: Request, user: Operator, container: ContainerDep, pages: Pages
) -> HTMLResponse:
    ctx = container.ctx
    tz = ZoneInfo(container.settings.display_tz)
    first, last = _period(request, tz, ctx.clock())
    days = await overview.sales_by_day(ctx, tz, first, last, None)
    start, end = overview.local_day_bounds(tz, first, last)
    return page(
        pages,
        request,
        "finance.html",
        user,
        "finance",
        days=days,
        first=first,
        last=last,
        chart=bar_chart(
            [(d.day.strftime("%d/%m"), d.gross) for d in days], test_id="finance-chart"
        ),
        by_machine=await overview.sales_by(ctx, start, end, "machine"),
        by_product=await overview.sales_by(ctx, start, end, "product"),
        totals={
            "orders": sum(d.orders for d in days),
            "gross": sum(d.gross for d in days),
            "refunded": sum(d.refunded for d in days),
            "net": sum(d.net for d in days),
        },
    )


@router.get("/finance.csv")
async def finance_csv(request: Request, user: Operator, container: ContainerDep) -> Response:
    tz = ZoneInfo(container.settings.display_tz)
    first, last = _period(request, tz, container.ctx.clock())
    days = await overview.sales_by_day(container.ctx, tz, first, last, None)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([f"day ({tz.key})", "orders_paid", "gross", "refunded", "net"])
    for d in days:
        writer.writerow([d.day.isoformat(), d.orders, d.gross, d.refunded, d.net])
    return Response(
        out.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="finance-{first}-{last}.csv"'},
    )
