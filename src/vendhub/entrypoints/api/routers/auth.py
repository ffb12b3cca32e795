"""Operator login."""

from __future__ import annotations

from fastapi import APIRouter

from vendhub.entrypoints.api.deps import AdminUser, ContainerDep, CurrentUser
from vendhub.entrypoints.api.schemas import LoginRequest, TokenResponse, UserCreate, UserPublic
from vendhub.services import auth

router = APIRouter(prefix="/api/auth", tags=["auth"])


@router.post("/login")
async def login(body: LoginRequest, container: ContainerDep) -> TokenResponse:
    user = await auth.authenticate(container.ctx, body.username, body.password)
    token = auth.issue_token(
        user, container.settings.jwt_secret, container.ctx, container.settings.jwt_expire_minutes
    )
    return TokenResponse(
        token=token,
        user=UserPublic(id=user["id"], username=user["username"], role=user["role"]),
    )


@router.get("/me")
async def me(user: CurrentUser) -> UserPublic:
    return UserPublic(id=user["sub"], username=user.get("username"), role=user["role"])


@router.post("/users", status_code=201)
async def create_user(body: UserCreate, container: ContainerDep, _: AdminUser) -> UserPublic:
    user_id = await auth.create_user(container.ctx, body.username, body.password, body.role)
    return UserPublic(id=user_id, username=body.username, role=body.role.value)
