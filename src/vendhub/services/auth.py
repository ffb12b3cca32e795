"""Operator accounts: argon2 password hashes and JWT bearer tokens with roles."""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum
from typing import Any

import jwt
import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.exc import IntegrityError

from vendhub.adapters.db.tables import users
from vendhub.services.context import ServiceContext
from vendhub.services.errors import Conflict, Unauthorized
from vendhub.services.ids import new_id
from vendhub.services.rows import first

_hasher = PasswordHasher()
ALGORITHM = "HS256"


class Role(StrEnum):
    SUPER_ADMIN = "SUPER_ADMIN"
    ADMIN = "ADMIN"
    TECHNICIAN = "TECHNICIAN"
    INVENTORY = "INVENTORY"
    AUDITOR = "AUDITOR"


ADMINS = frozenset({Role.SUPER_ADMIN, Role.ADMIN})


async def create_user(ctx: ServiceContext, username: str, password: str, role: Role) -> str:
    if len(password) < 8:
        raise Conflict("password must have at least 8 characters")
    user_id = new_id()
    try:
        async with ctx.engine.begin() as conn:
            await conn.execute(
                sa.insert(users).values(
                    id=user_id,
                    username=username,
                    password_hash=_hasher.hash(password),
                    role=role.value,
                    created_at=ctx.clock(),
                )
            )
    except IntegrityError:
        raise Conflict(f"user {username} already exists") from None
    return user_id


async def ensure_admin(ctx: ServiceContext, username: str, password: str) -> bool:
    """Bootstrap: create the admin from settings when no user exists yet."""
    async with ctx.engine.connect() as conn:
        if await conn.scalar(sa.select(sa.func.count()).select_from(users)):
            return False
    await create_user(ctx, username, password, Role.SUPER_ADMIN)
    return True


async def authenticate(ctx: ServiceContext, username: str, password: str) -> dict[str, Any]:
    async with ctx.engine.connect() as conn:
        user = await first(conn, sa.select(users).where(users.c.username == username))
    try:
        if user is None or not user["is_active"]:
            raise VerificationError("no such active user")
        _hasher.verify(user["password_hash"], password)
    except (VerificationError, InvalidHashError):
        raise Unauthorized("wrong username or password") from None
    return dict(user)


def issue_token(user: dict[str, Any], secret: str, ctx: ServiceContext, minutes: int) -> str:
    now = ctx.clock()
    claims = {
        "sub": user["id"],
        "username": user["username"],
        "role": user["role"],
        "iat": now,
        "exp": now + timedelta(minutes=minutes),
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def read_token(token: str, secret: str) -> dict[str, Any]:
    try:
        claims: dict[str, Any] = jwt.decode(
            token, secret, algorithms=[ALGORITHM], options={"require": ["exp", "sub", "role"]}
        )
    except jwt.PyJWTError as exc:
        raise Unauthorized(f"invalid token: {exc}") from None
    if claims["role"] not in Role.__members__:
        raise Unauthorized("invalid token: unknown role")
    return claims
