"""Operator login and accounts."""

from __future__ import annotations

import math

from fastapi import APIRouter, Request, Response

from vendhub.entrypoints.api.deps import AdminUser, ContainerDep, CurrentUser, WindowDep
from vendhub.entrypoints.api.replies import Page
from vendhub.entrypoints.api.schemas import (
    LoginRequest,
    TokenResponse,
    UserAccount,
    UserCreate,
    UserPublic,
    UserUpdate,
)
from vendhub.entrypoints.api.security import RateLimits, scope_client
from vendhub.services import auth
from vendhub.services.errors import RateLimited, Unauthorized
from vendhub.services.views import Slice

router = APIRouter(prefix="/api/auth", tags=["auth"])


@router.post("/login")
async def login(body: LoginRequest, request: Request, container: ContainerDep) -> TokenResponse:
    settings = container.settings
    limits: RateLimits = request.app.state.limits
    client = scope_client(request.scope, settings.trusted_proxy_networks)
    per_client = await limits.hit(settings.login_limit_per_client, "login-client", client)
    per_user = await limits.blocked(settings.login_limit_per_username, "login-user", body.username)
    if per_client is not None or per_user is not None:
        wait = max(per_client or 0, per_user or 0)
        raise RateLimited(f"too many login attempts; retry in {math.ceil(wait)} s", wait)
    try:
        user = await auth.authenticate(container.ctx, body.username, body.password)
    except Unauthorized:
        await limits.hit(settings.login_limit_per_username, "login-user", body.username)
        raise
    token = auth.issue_token(user, settings.jwt_secret, container.ctx, settings.jwt_expire_minutes)
    return TokenResponse(
        token=token,
        user=UserPublic(id=user["id"], username=user["username"], role=user["role"]),
    )


@router.get("/me")
async def me(user: CurrentUser) -> UserPublic:
    return UserPublic(id=user["sub"], username=user.get("username"), role=user["role"])


@router.post("/users", status_code=201)
async def create_user(body: UserCreate, container: ContainerDep, actor: AdminUser) -> UserPublic:
    user_id = await auth.create_user(
        container.ctx, body.username, body.password, body.role, actor_role=actor["role"]
    )
    return UserPublic(id=user_id, username=body.username, role=body.role.value)


@router.get("/users")
async def list_users(container: ContainerDep, _: AdminUser, page: WindowDep) -> Page[UserAccount]:
    accounts = [UserAccount(**u) for u in await auth.list_users(container.ctx)]
    return Page[UserAccount].of(Slice.cut(accounts, page))


@router.patch("/users/{user_id}")
async def update_user(
    user_id: str, body: UserUpdate, container: ContainerDep, actor: AdminUser
) -> UserAccount:
    """is_active, role, password; each change revokes the user's tokens at once."""
    return UserAccount(
        **await auth.update_user(container.ctx, actor, user_id, body.model_dump(exclude_unset=True))
    )


@router.delete("/users/{user_id}", status_code=204)
async def delete_user(user_id: str, container: ContainerDep, actor: AdminUser) -> Response:
    await auth.delete_user(container.ctx, actor, user_id)
    return Response(status_code=204)
