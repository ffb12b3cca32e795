"""Console sign-in: the operator's JWT in an HttpOnly SameSite cookie, CSRF tokens for forms."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Annotated, Any

from fastapi import Depends, Request

from vendhub.entrypoints.api.deps import ContainerDep
from vendhub.services import auth
from vendhub.services.auth import Role
from vendhub.services.errors import Forbidden, Unauthorized

SESSION_COOKIE = "vendhub_session"
LOGIN_CSRF_COOKIE = "vendhub_login_csrf"


class LoginRequired(Exception):
    """No valid session: the page answers with a redirect to the login form."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


class PageForbidden(Forbidden):
    """Signed in, but this role may not: the page answers with an HTML 403."""


def csrf_token(session_token: str, secret: str) -> str:
    """Bound to the session, so a token from another session (or none) is refused."""
    return hmac.new(secret.encode(), b"csrf:" + session_token.encode(), hashlib.sha256).hexdigest()


def new_login_csrf() -> str:
    return secrets.token_urlsafe(24)


def same(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(str(a), str(b))


def _next_path(request: Request) -> str:
    path = request.url.path
    return path + (f"?{request.url.query}" if request.url.query else "")


def session_claims(request: Request, secret: str) -> dict[str, Any] | None:
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    try:
        claims = auth.read_token(token, secret)
    except Unauthorized:
        return None
    claims["csrf"] = csrf_token(token, secret)
    return claims


def console_user(request: Request, container: ContainerDep) -> dict[str, Any]:
    claims = session_claims(request, container.settings.jwt_secret)
    if claims is None:
        raise LoginRequired(_next_path(request))
    return claims


Operator = Annotated[dict[str, Any], Depends(console_user)]


def may(user: dict[str, Any], *roles: Role) -> bool:
    """The API's rule: one of `roles`, and SUPER_ADMIN always."""
    return user["role"] in {r.value for r in roles} | {Role.SUPER_ADMIN.value}


def require_role(user: dict[str, Any], *roles: Role) -> None:
    if not may(user, *roles):
        raise PageForbidden(f"role {user['role']} may not do this")


async def checked_form(request: Request, user: dict[str, Any]) -> dict[str, str]:
    """The posted form, after its CSRF token matched the session's."""
    form = await request.form()
    values = {k: v for k, v in form.items() if isinstance(v, str)}
    if not same(values.get("csrf"), user["csrf"]):
        raise PageForbidden("the form's CSRF token is missing or wrong; reload the page")
    return values
