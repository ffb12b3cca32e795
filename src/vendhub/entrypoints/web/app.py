"""Mounts the pages on the API app: routers, static files, templates, redirects to sign-in."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from vendhub.entrypoints.web import console, console_admin, console_ops, kiosk
from vendhub.entrypoints.web.render import STATIC_DIR, build_templates
from vendhub.entrypoints.web.session import LoginRequired, PageForbidden


def install(app: FastAPI, display_tz: str) -> None:
    app.state.templates = build_templates(display_tz)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    for module in (kiosk, console, console_ops, console_admin):
        app.include_router(module.router)

    @app.exception_handler(LoginRequired)
    async def _login(_: Request, exc: LoginRequired) -> Response:
        return RedirectResponse(f"/console/login?next={quote(exc.next_path)}", status_code=303)

    @app.exception_handler(PageForbidden)
    async def _forbidden(request: Request, exc: PageForbidden) -> Response:
        response: HTMLResponse = app.state.templates.TemplateResponse(
            request, "console/forbidden.html", {"message": str(exc)}, status_code=403
        )
        return response
