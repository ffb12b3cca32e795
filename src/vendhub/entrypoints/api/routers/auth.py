"""Operator login."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from vendhub.entrypoints.api.deps import AdminUser, ContainerDep, CurrentUser
from vendhub.entrypoints.api.schemas import LoginRequest, TokenResponse, UserCreate
from vendhub.services import auth

router = APIRouter(prefix="/api/auth", tags=["auth"])


@router.post("/login")
async def login(body: LoginRequest, container: ContainerDep) -> TokenResponse:
    user = await auth.authenticate(container.ctx, body.username, body.password)
    token = auth.issue_token(
        user, container.settings.jwt_secret, container.ctx, container.settings.jwt_expire_minutes
    )
    return TokenResponse(
        token=token, user={"id": user["id"], "username": user["username"], "role": user["role"]}
    )


@router.get("/me")
async def me(user: CurrentUser) -> dict[str, Any]:
    return {"id": user["sub"], "username": user.get("username"), "role": user["role"]}


@router.post("/users", status_code=201)
async def create_user(body: UserCreate, container: ContainerDep, _: AdminUser) -> dict[str, Any]:
    user_id = await auth.create_user(container.ctx, body.username, body.password, body.role)
    return {"id": user_id, "username": body.username, "role": body.role.value}
