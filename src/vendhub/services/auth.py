"""Operator accounts: argon2 password hashes and JWT bearer tokens with roles."""

from __future__ import annotations

import asyncio
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
from vendhub.services.errors import Conflict, Forbidden, InvalidRequest, NotFound, Unauthorized
from vendhub.services.ids import new_id
from vendhub.services.rows import every, first

_hasher = PasswordHasher()
ALGORITHM = "HS256"
# A hash of a random, forgotten password with the hasher's parameters: unknown usernames are
# verified against it, so they cost the same as known ones from the very first request.
_DUMMY_HASH = (
    "$argon2id$v=19$m=65536,t=3,p=4$fQM4A+pKwRV5UBjRDvzBNg"
    "$0NdYohrg7obWxdItotu8sa9Np0MCA8w7hwpCXWD2QIs"
)
_dummy_hash: str | None = None if _hasher.check_needs_rehash(_DUMMY_HASH) else _DUMMY_HASH


class Role(StrEnum):
    SUPER_ADMIN = "SUPER_ADMIN"
    ADMIN = "ADMIN"
    TECHNICIAN = "TECHNICIAN"
    INVENTORY = "INVENTORY"
    AUDITOR = "AUDITOR"


ADMINS = frozenset({Role.SUPER_ADMIN, Role.ADMIN})
PUBLIC_USER_FIELDS = ("id", "username", "role", "is_active", "created_at")


async def hash_password(password: str) -> str:
    # argon2 takes ~0.1 s of CPU by design: never on the event loop.
    return await asyncio.to_thread(_hasher.hash, password)


def _check_password(password: str) -> None:
    if len(password) < 8:
        raise InvalidRequest("password must have at least 8 characters")


async def create_user(
    ctx: ServiceContext, username: str, password: str, role: Role, *, actor_role: str | None = None
) -> str:
    """A new account; `actor_role` is the creating operator's (None: the CLI or bootstrap)."""
    _check_password(password)
    if role is Role.SUPER_ADMIN and actor_role not in (None, Role.SUPER_ADMIN.value):
        raise Forbidden("only a SUPER_ADMIN creates a SUPER_ADMIN")
    user_id = new_id()
    password_hash = await hash_password(password)
    try:
        async with ctx.engine.begin() as conn:
            await conn.execute(
                sa.insert(users).values(
                    id=user_id,
                    username=username,
                    password_hash=password_hash,
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
    try:
        await create_user(ctx, username, password, Role.SUPER_ADMIN)
    except Conflict:  # another replica or worker, starting at the same moment, created it
        return False
    return True


async def _dummy() -> str:
    """A hash to verify against for unknown users, so they cost the same work as known ones."""
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = await hash_password(new_id())
    return _dummy_hash


async def authenticate(ctx: ServiceContext, username: str, password: str) -> dict[str, Any]:
    async with ctx.engine.connect() as conn:
        user = await first(conn, sa.select(users).where(users.c.username == username))
    stored = user["password_hash"] if user is not None else await _dummy()
    try:
        await asyncio.to_thread(_hasher.verify, stored, password)
        if user is None or not user["is_active"]:
            raise VerificationError("no such active user")
    except (VerificationError, InvalidHashError):
        raise Unauthorized("wrong username or password") from None
    return dict(user)


def issue_token(user: dict[str, Any], secret: str, ctx: ServiceContext, minutes: int) -> str:
    now = ctx.clock()
    claims = {
        "sub": user["id"],
        "username": user["username"],
        "role": user["role"],
        "ver": int(user.get("token_version") or 0),
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


async def current_operator(ctx: ServiceContext, claims: dict[str, Any]) -> dict[str, Any]:
    """The token's user as it is now: gone, deactivated or re-versioned means 401 at once."""
    if not isinstance(claims["sub"], str) or len(claims["sub"]) > 40:
        raise Unauthorized("invalid token: bad subject")
    async with ctx.engine.connect() as conn:
        user = await first(conn, sa.select(users).where(users.c.id == claims["sub"]))
    if user is None or not user["is_active"]:
        raise Unauthorized("this account no longer exists or is deactivated")
    if claims.get("ver", 0) != user["token_version"]:
        raise Unauthorized("this token was revoked; log in again")
    # The role is read from the account, not the token, so a demotion applies at once.
    return {**claims, "role": user["role"], "username": user["username"]}


async def list_users(ctx: ServiceContext) -> list[dict[str, Any]]:
    async with ctx.engine.connect() as conn:
        rows = await every(conn, sa.select(users).order_by(users.c.username))
    return [{k: r[k] for k in PUBLIC_USER_FIELDS} for r in rows]


async def update_user(
    ctx: ServiceContext, actor: dict[str, Any], user_id: str, changes: dict[str, Any]
) -> dict[str, Any]:
    """Change is_active, role or password; any of them revokes the user's tokens."""
    if "password" in changes:
        _check_password(changes["password"])
        changes["password_hash"] = await hash_password(changes.pop("password"))
    if "role" in changes:
        changes["role"] = Role(changes["role"]).value
    async with ctx.engine.begin() as conn:
        user = await first(conn, sa.select(users).where(users.c.id == user_id).with_for_update())
        if user is None:
            raise NotFound(f"user {user_id} not found")
        _may_manage(actor, user, changes.get("role"))
        if user_id == actor["sub"] and (
            changes.get("is_active") is False or changes.get("role", user["role"]) != user["role"]
        ):
            raise Conflict("you cannot deactivate or demote your own account")
        await conn.execute(
            sa.update(users)
            .where(users.c.id == user_id)
            .values(**changes, token_version=users.c.token_version + 1)
        )
        updated = await first(conn, sa.select(users).where(users.c.id == user_id))
    assert updated is not None
    return {k: updated[k] for k in PUBLIC_USER_FIELDS}


async def delete_user(ctx: ServiceContext, actor: dict[str, Any], user_id: str) -> None:
    if user_id == actor["sub"]:
        raise Conflict("you cannot delete your own account")
    async with ctx.engine.begin() as conn:
        user = await first(conn, sa.select(users).where(users.c.id == user_id).with_for_update())
        if user is None:
            raise NotFound(f"user {user_id} not found")
        _may_manage(actor, user, None)
        await conn.execute(sa.delete(users).where(users.c.id == user_id))


def may_grant(actor_role: str, role: Role) -> bool:
    """Only a SUPER_ADMIN makes or promotes another SUPER_ADMIN."""
    return role is not Role.SUPER_ADMIN or actor_role == Role.SUPER_ADMIN.value


def _may_manage(actor: dict[str, Any], user: Any, new_role: str | None) -> None:
    """Only a SUPER_ADMIN touches a SUPER_ADMIN account or grants the role."""
    if actor["role"] == Role.SUPER_ADMIN.value:
        return
    if user["role"] == Role.SUPER_ADMIN.value:
        raise Forbidden("only a SUPER_ADMIN may change a SUPER_ADMIN account")
    if new_role == Role.SUPER_ADMIN.value:
        raise Forbidden("only a SUPER_ADMIN promotes to SUPER_ADMIN")
