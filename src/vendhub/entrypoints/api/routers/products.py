"""Products: public browsing, operator editing."""

from __future__ import annotations

from fastapi import APIRouter, Response

from vendhub.entrypoints.api.deps import AdminUser, CtxDep, WindowDep
from vendhub.entrypoints.api.replies import ProductPage
from vendhub.entrypoints.api.schemas import ProductIn, ProductPublic
from vendhub.services import catalog
from vendhub.services.views import Slice

router = APIRouter(prefix="/api/products", tags=["products"])


@router.get("")
async def list_products(ctx: CtxDep, page: WindowDep, machine_id: str | None = None) -> ProductPage:
    return ProductPage.of(Slice.cut(await catalog.list_products(ctx, machine_id), page))


@router.get("/available")
async def available_products(
    ctx: CtxDep, page: WindowDep, machine_id: str | None = None
) -> ProductPage:
    """What a customer can buy at the machine now: one entry per slot, in slot order."""
    machine = machine_id or ctx.tunables.default_machine_id
    return ProductPage.of(Slice.cut(await catalog.list_products(ctx, machine, True), page))


@router.get("/{product_id}")
async def get_product(product_id: str, ctx: CtxDep) -> ProductPublic:
    return ProductPublic.of(await catalog.get_product(ctx, product_id))


@router.post("", status_code=201)
async def create_product(body: ProductIn, ctx: CtxDep, _: AdminUser) -> ProductPublic:
    return ProductPublic.of(await catalog.save_product(ctx, body.model_dump()))


@router.put("/{product_id}")
async def update_product(
    product_id: str, body: ProductIn, ctx: CtxDep, _: AdminUser
) -> ProductPublic:
    return ProductPublic.of(await catalog.save_product(ctx, body.model_dump(), product_id))


@router.delete("/{product_id}", status_code=204)
async def delete_product(product_id: str, ctx: CtxDep, _: AdminUser) -> Response:
    await catalog.deactivate_product(ctx, product_id)
    return Response(status_code=204)
