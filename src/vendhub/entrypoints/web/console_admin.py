"""Operator console: products and operator accounts (ADMIN and above change them)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from vendhub.entrypoints.api.deps import ContainerDep
from vendhub.entrypoints.web.console import act, page
from vendhub.entrypoints.web.render import Pages
from vendhub.entrypoints.web.session import Operator, checked_form, require_role
from vendhub.services import auth, catalog, overview
from vendhub.services.auth import Role
from vendhub.services.errors import InvalidRequest

router = APIRouter(prefix="/console", include_in_schema=False)


@router.get("/products", response_class=HTMLResponse)
async def products_page(
    request: Request, user: Operator, container: ContainerDep, pages: Pages
) -> HTMLResponse:
    rows = await overview.all_products(container.ctx)
    return page(pages, request, "products.html", user, "products", products=rows)


def _product_data(values: dict[str, str]) -> dict[str, Any]:
    name = values.get("name", "").strip()[:120]
    price = values.get("price", "").strip()
    if not name:
        raise InvalidRequest("a product needs a name")
    if not price.isdigit() or len(price) > 12:
        raise InvalidRequest("price must be whole rupiah, e.g. 4000")
    return {
        "name": name,
        "price": int(price),
        "category": values.get("category", "").strip()[:60] or None,
        "description": values.get("description", "").strip()[:2000] or None,
        "image_url": values.get("image_url", "").strip()[:500] or None,
        "is_active": True,
    }


@router.post("/products")
async def create_product(request: Request, user: Operator, container: ContainerDep) -> Response:
    require_role(user, Role.ADMIN)
    values = await checked_form(request, user)

    async def work() -> None:
        await catalog.save_product(container.ctx, _product_data(values))

    return await act("/console/products", work(), "product created")


@router.post("/products/{product_id}")
async def edit_product(
    request: Request, product_id: str, user: Operator, container: ContainerDep
) -> Response:
    require_role(user, Role.ADMIN)
    values = await checked_form(request, user)

    async def work() -> None:
        await catalog.save_product(container.ctx, _product_data(values), product_id)

    return await act("/console/products", work(), "product saved")


@router.post("/products/{product_id}/deactivate")
async def deactivate_product(
    request: Request, product_id: str, user: Operator, container: ContainerDep
) -> Response:
    require_role(user, Role.ADMIN)
    await checked_form(request, user)
    work = catalog.deactivate_product(container.ctx, product_id)
    return await act("/console/products", work, "product deactivated")


@router.get("/users", response_class=HTMLResponse)
async def users_page(
    request: Request, user: Operator, container: ContainerDep, pages: Pages
) -> HTMLResponse:
    require_role(user, Role.ADMIN)
    return page(
        pages,
        request,
        "users.html",
        user,
        "users",
        users=await auth.list_users(container.ctx),
        roles=[r.value for r in Role if auth.may_grant(user["role"], r)],
    )


def _role(values: dict[str, str]) -> Role:
    try:
        return Role(values.get("role", ""))
    except ValueError:
        raise InvalidRequest("unknown role") from None


@router.post("/users")
async def create_user(request: Request, user: Operator, container: ContainerDep) -> Response:
    require_role(user, Role.ADMIN)
    values = await checked_form(request, user)

    async def work() -> None:
        username = values.get("username", "").strip()
        if not username or len(username) > 64:
            raise InvalidRequest("a username has 1 to 64 characters")
        await auth.create_user(
            container.ctx,
            username,
            values.get("password", "")[:256],
            _role(values),
            actor_role=user["role"],
        )

    return await act("/console/users", work(), "user created")


@router.post("/users/{user_id}/role")
async def change_role(
    request: Request, user_id: str, user: Operator, container: ContainerDep
) -> Response:
    require_role(user, Role.ADMIN)
    values = await checked_form(request, user)

    async def work() -> None:
        await auth.update_user(container.ctx, user, user_id, {"role": _role(values).value})

    return await act("/console/users", work(), "role changed")


@router.post("/users/{user_id}/active")
async def set_active(
    request: Request, user_id: str, user: Operator, container: ContainerDep
) -> Response:
    require_role(user, Role.ADMIN)
    values = await checked_form(request, user)
    on = values.get("active") == "on"
    work = auth.update_user(container.ctx, user, user_id, {"is_active": on})
    return await act("/console/users", work, "user activated" if on else "user deactivated")
