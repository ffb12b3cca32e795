"""Jinja2 environment shared by the kiosk and console: money, local times, SVG charts."""

from __future__ import annotations

import zlib
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import Depends, Request
from fastapi.templating import Jinja2Templates
from markupsafe import Markup

from vendhub import __version__
from vendhub.domain.money import rupiah

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"


def local_time(value: datetime | None, tz: ZoneInfo, fmt: str = "%Y-%m-%d %H:%M") -> str:
    return value.astimezone(tz).strftime(fmt) if value else "–"


def build_templates(display_tz: str) -> Jinja2Templates:
    tz = ZoneInfo(display_tz)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    env = templates.env
    env.filters["rp"] = rupiah
    env.filters["local"] = lambda v, fmt="%Y-%m-%d %H:%M": local_time(v, tz, fmt)
    env.globals["version"] = __version__
    env.globals["display_tz"] = display_tz
    return templates


def svg(markup: str) -> Markup:
    return Markup(markup)  # callers build it from numbers and escaped labels only


def page_numbers(total: int, limit: int, offset: int) -> dict[str, Any]:
    pages = max(1, -(-total // limit))
    page = offset // limit + 1
    return {"page": page, "pages": pages, "total": total, "limit": limit}


def get_pages(request: Request) -> Jinja2Templates:
    templates: Jinja2Templates = request.app.state.templates
    return templates


Pages = Annotated[Jinja2Templates, Depends(get_pages)]

# Simple shapes per category, drawn when a product has no image of its own.
_SHAPES = {
    "drink": '<rect x="38" y="18" width="24" height="10" rx="3" fill="#fff" opacity=".85"/>'
    '<path d="M34 30 h32 v52 a8 8 0 0 1 -8 8 h-16 a8 8 0 0 1 -8 -8z" fill="#fff" opacity=".9"/>'
    '<rect x="34" y="48" width="32" height="16" fill="{c}" opacity=".55"/>',
    "food": '<path d="M18 50 h64 a32 30 0 0 1 -64 0z" fill="#fff" opacity=".9"/>'
    '<path d="M30 44 q10 -16 20 0 q10 -16 20 0" stroke="#fff" stroke-width="4" fill="none"/>',
    "snack": '<path d="M26 20 h48 l-4 8 l4 8 v44 l-4 -6 l-4 6 h-32 l-4 -6 l-4 6 v-44 l4 -8z" '
    'fill="#fff" opacity=".9"/><circle cx="50" cy="56" r="11" fill="{c}" opacity=".6"/>',
}


def product_art(name: str, category: str | None) -> Markup:
    """A coloured tile with a category shape, its hue taken from the name."""
    hue = zlib.crc32(name.encode()) % 360
    color = f"hsl({hue} 62% 46%)"
    shape = _SHAPES.get((category or "").lower(), _SHAPES["snack"]).replace("{c}", color)
    return svg(
        f'<svg viewBox="0 0 100 100" class="art" aria-hidden="true" '
        f'xmlns="http://www.w3.org/2000/svg"><defs><linearGradient id="g{hue}" x1="0" y1="0" '
        f'x2="1" y2="1"><stop offset="0" stop-color="hsl({hue} 70% 58%)"/>'
        f'<stop offset="1" stop-color="hsl({(hue + 40) % 360} 65% 40%)"/></linearGradient></defs>'
        f'<rect width="100" height="100" rx="16" fill="url(#g{hue})"/>{shape}'
        "</svg>"
    )
