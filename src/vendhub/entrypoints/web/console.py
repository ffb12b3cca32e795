"""Operator console: sign-in, dashboard and machines (planogram, stock, config, telemetry)."""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import timedelta
from typing import Any
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from vendhub.domain.model import DomainError
from vendhub.entrypoints.api.deps import ContainerDep
from vendhub.entrypoints.web.charts import bar_chart, line_chart
from vendhub.entrypoints.web.render import Pages, local_time
from vendhub.entrypoints.web.session import (
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    Operator,
    checked_form,
    may,
    new_login_csrf,
    require_role,
    same,
)
from vendhub.services import alerts, auth, catalog, overview, reports
from vendhub.services.auth import Role
from vendhub.services.errors import InvalidRequest, Unauthorized
from vendhub.services.stock import ChangeType, fill_machine, update_stock
from vendhub.services.views import Window

router = APIRouter(prefix="/console", include_in_schema=False)

NAV = [
    ("dashboard", "/console", "Dashboard"),
    ("machines", "/console/machines", "Machines"),
    ("products", "/console/products", "Products"),
    ("orders", "/console/orders", "Orders"),
    ("alerts", "/console/alerts", "Alerts"),
    ("refunds", "/console/refunds", "Refunds"),
    ("finance", "/console/finance", "Finance"),
    ("users", "/console/users", "Users"),
]


def page(
    pages: Jinja2Templates,
    request: Request,
    name: str,
    user: dict[str, Any],
    active: str,
    **context: Any,
) -> HTMLResponse:
    return pages.TemplateResponse(
        request,
        f"console/{name}",
        {
            "user": user,
            "csrf": user["csrf"],
            "nav": NAV,
            "active": active,
            "can": lambda *roles: may(user, *roles),
            "Role": Role,
            "ok": request.query_params.get("ok"),
            "err": request.query_params.get("err"),
            **context,
        },
    )


async def act(back: str, work: Awaitable[Any], done: str) -> RedirectResponse:
    """Run a form's action; come back to `back` saying how it went (PRG)."""
    sep = "&" if "?" in back else "?"
    try:
        await work
    except DomainError as exc:
        return RedirectResponse(f"{back}{sep}{urlencode({'err': str(exc)})}", status_code=303)
    return RedirectResponse(f"{back}{sep}{urlencode({'ok': done})}", status_code=303)


def safe_next(value: str | None) -> str:
    """Only a path on this site: never an open redirect."""
    if value and value.startswith("/console") and not value.startswith("//"):
        return value
    return "/console"


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, pages: Pages) -> HTMLResponse:
    token = new_login_csrf()
    response = pages.TemplateResponse(
        request,
        "console/login.html",
        {"csrf": token, "next": safe_next(request.query_params.get("next")), "error": None},
    )
    response.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", path="/console")
    return response


@router.post("/login")
async def login(request: Request, container: ContainerDep, pages: Pages) -> Response:
    form = await request.form()
    values = {k: v for k, v in form.items() if isinstance(v, str)}
    next_path = safe_next(values.get("next"))
    error = None
    if not same(values.get("csrf"), request.cookies.get(LOGIN_CSRF_COOKIE)):
        error = "Your sign-in form expired; please try again."
    else:
        try:
            user = await auth.authenticate(
                container.ctx, values.get("username", "")[:64], values.get("password", "")[:256]
            )
        except Unauthorized:
            error = "Wrong username or password."
    if error is not None:
        token = new_login_csrf()
        response: Response = pages.TemplateResponse(
            request,
            "console/login.html",
            {"csrf": token, "next": next_path, "error": error},
            status_code=401,
        )
        response.set_cookie(
            LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", path="/console"
        )
        return response
    settings = container.settings
    session = auth.issue_token(
        user, settings.jwt_secret, container.ctx, settings.jwt_expire_minutes
    )
    response = RedirectResponse(next_path, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        session,
        max_age=settings.jwt_expire_minutes * 60,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/console")
    return response


@router.post("/logout")
async def logout(request: Request, user: Operator) -> Response:
    await checked_form(request, user)
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("", response_class=HTMLResponse)
async def dashboard(
    request: Request, user: Operator, container: ContainerDep, pages: Pages
) -> HTMLResponse:
    ctx = container.ctx
    tz = ZoneInfo(container.settings.display_tz)
    today = ctx.clock().astimezone(tz).date()
    days = await overview.sales_by_day(ctx, tz, today - timedelta(days=13), today, None)
    chart = bar_chart([(d.day.strftime("%d/%m"), d.gross) for d in days], test_id="sales-chart")
    return page(
        pages,
        request,
        "dashboard.html",
        user,
        "dashboard",
        machines=await overview.fleet(ctx),
        today=days[-1],
        chart=chart,
        fortnight=sum(d.gross for d in days),
        open_alerts=sum((await alerts.open_counts(ctx)).values()),
    )


@router.get("/machines", response_class=HTMLResponse)
async def machines_page(
    request: Request, user: Operator, container: ContainerDep, pages: Pages
) -> HTMLResponse:
    return page(
        pages,
        request,
        "machines.html",
        user,
        "machines",
        machines=await overview.fleet(container.ctx),
    )


@router.get("/machines/{machine_id}", response_class=HTMLResponse)
async def machine_page(
    request: Request, machine_id: str, user: Operator, container: ContainerDep, pages: Pages
) -> HTMLResponse:
    ctx = container.ctx
    tz = ZoneInfo(container.settings.display_tz)
    machine = await catalog.get_machine(ctx, machine_id)
    readings = list(
        reversed((await reports.telemetry_for(ctx, machine_id, None, Window(limit=120))).items)
    )
    chart = line_chart(
        [
            ("Temperature °C", [r.temperature for r in readings]),
            ("Humidity %", [r.humidity for r in readings]),
        ],
        [local_time(r.received_at, tz, "%d/%m %H:%M") for r in readings],
        test_id="telemetry-chart",
    )
    return page(
        pages,
        request,
        "machine.html",
        user,
        "machines",
        machine=machine,
        slots=await catalog.list_slots(ctx, machine_id),
        products=await catalog.list_products(ctx),
        stock_log=(await reports.stock_logs_for(ctx, machine_id, Window(limit=30))).items,
        events=await alerts.timeline(ctx, machine_id, 30),
        chart=chart,
        readings=len(readings),
    )


def _int(values: dict[str, str], name: str, default: int | None = None) -> int | None:
    raw = values.get(name, "").strip()
    if not raw:
        return default
    if not raw.lstrip("-").isdigit() or len(raw) > 12:
        raise InvalidRequest(f"{name} must be a whole number")
    return int(raw)


@router.post("/machines/{machine_id}/slots/{slot_number}")
async def save_slot(
    request: Request, machine_id: str, slot_number: int, user: Operator, container: ContainerDep
) -> Response:
    require_role(user, Role.ADMIN)
    values = await checked_form(request, user)
    back = f"/console/machines/{quote(machine_id)}"

    async def work() -> None:
        data = {
            "product_id": values.get("product_id") or None,
            "price_override": _int(values, "price_override"),
            "capacity": _int(values, "capacity", 10),
            "motor_duration_ms": _int(values, "motor_duration_ms", 1500),
            "is_active": values.get("is_active") == "on",
        }
        await catalog.upsert_slot(container.ctx, machine_id, slot_number, data)

    return await act(back, work(), f"slot {slot_number} saved")


@router.post("/machines/{machine_id}/restock/{slot_number}")
async def restock(
    request: Request, machine_id: str, slot_number: int, user: Operator, container: ContainerDep
) -> Response:
    require_role(user, Role.ADMIN, Role.INVENTORY)
    values = await checked_form(request, user)
    back = f"/console/machines/{quote(machine_id)}"

    async def work() -> None:
        await update_stock(
            container.ctx,
            machine_id,
            slot_number,
            ChangeType.RESTOCK,
            quantity_change=None,
            new_stock=_int(values, "new_stock", 0),
            reason="console restock",
            user_id=user["sub"],
        )

    return await act(back, work(), f"slot {slot_number} restocked")


@router.post("/machines/{machine_id}/fill")
async def fill_all(
    request: Request, machine_id: str, user: Operator, container: ContainerDep
) -> Response:
    require_role(user, Role.ADMIN, Role.INVENTORY)
    await checked_form(request, user)
    back = f"/console/machines/{quote(machine_id)}"
    work = fill_machine(container.ctx, machine_id, user_id=user["sub"])
    return await act(back, work, "every slot filled to capacity")


@router.post("/machines/{machine_id}/config")
async def push_config(
    request: Request, machine_id: str, user: Operator, container: ContainerDep
) -> Response:
    require_role(user, Role.ADMIN, Role.TECHNICIAN)
    await checked_form(request, user)
    back = f"/console/machines/{quote(machine_id)}"
    return await act(back, catalog.push_config(container.ctx, machine_id), "config queued")


@router.post("/machines/{machine_id}/selling")
async def set_selling(
    request: Request, machine_id: str, user: Operator, container: ContainerDep
) -> Response:
    """Out of service (no new orders) on/off; the device's own MAINTENANCE is separate."""
    require_role(user, Role.ADMIN)
    values = await checked_form(request, user)
    on = values.get("selling") == "on"
    back = f"/console/machines/{quote(machine_id)}"
    work = catalog.update_machine(container.ctx, machine_id, {"is_active": on})
    return await act(back, work, "machine back in service" if on else "machine out of service")
