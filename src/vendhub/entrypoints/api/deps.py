"""FastAPI dependencies: the container, the service context, the current operator."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from vendhub.bootstrap import Container
from vendhub.services import auth
from vendhub.services.auth import Role
from vendhub.services.context import ServiceContext
from vendhub.services.errors import Forbidden, NotFound, Unauthorized
from vendhub.services.views import MAX_LIMIT, Window

_bearer = HTTPBearer(auto_error=False)


# Dependencies are `async def`: FastAPI runs a plain `def` one in a worker thread, a thread
# hop per request on every route (measured: ~3 % of the process under webhook load).
async def get_container(request: Request) -> Container:
    container: Container = request.app.state.container
    return container


ContainerDep = Annotated[Container, Depends(get_container)]


async def get_ctx(container: ContainerDep) -> ServiceContext:
    return container.ctx


CtxDep = Annotated[ServiceContext, Depends(get_ctx)]


async def current_user(
    container: ContainerDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> dict[str, Any]:
    if credentials is None:
        raise Unauthorized("missing bearer token")
    claims = auth.read_token(credentials.credentials, container.settings.jwt_secret)
    return await auth.current_operator(container.ctx, claims)


async def optional_user(
    container: ContainerDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> dict[str, Any] | None:
    """The operator when a bearer token is sent (a bad one is still a 401), else None."""
    if credentials is None:
        return None
    return await current_user(container, credentials)


CurrentUser = Annotated[dict[str, Any], Depends(current_user)]
OptionalUser = Annotated[dict[str, Any] | None, Depends(optional_user)]


def require(*roles: Role) -> Callable[..., Coroutine[Any, Any, dict[str, Any]]]:
    """Dependency: the operator must hold one of `roles` (SUPER_ADMIN always passes)."""
    allowed = {r.value for r in roles} | {Role.SUPER_ADMIN.value}

    async def check(user: CurrentUser) -> dict[str, Any]:
        if user["role"] not in allowed:
            raise Forbidden(f"role {user['role']} may not do this")
        return user

    return check


AdminUser = Annotated[dict[str, Any], Depends(require(Role.ADMIN))]
StockUser = Annotated[dict[str, Any], Depends(require(Role.ADMIN, Role.INVENTORY))]
TechUser = Annotated[dict[str, Any], Depends(require(Role.ADMIN, Role.TECHNICIAN))]


async def debug_enabled(request: Request, container: ContainerDep) -> None:
    """Debug endpoints: off unless enabled; in production, admins only."""
    if not container.settings.debug_enabled:
        raise NotFound("debug endpoints are disabled")
    if container.settings.is_production:
        creds = await _bearer(request)
        if creds is None:
            raise Unauthorized("missing bearer token")
        claims = auth.read_token(creds.credentials, container.settings.jwt_secret)
        claims = await auth.current_operator(container.ctx, claims)
        if claims["role"] not in (Role.ADMIN.value, Role.SUPER_ADMIN.value):
            raise Forbidden("debug endpoints are admin-only in production")


async def window(
    limit: int = Query(default=100, ge=1, le=MAX_LIMIT, description="rows per page"),
    offset: int = Query(default=0, ge=0, le=1_000_000, description="rows to skip"),
) -> Window:
    """Every list endpoint's page: `limit` rows from `offset` (see the reply's next_offset)."""
    return Window(limit, offset)


WindowDep = Annotated[Window, Depends(window)]
