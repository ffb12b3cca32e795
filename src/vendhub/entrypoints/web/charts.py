"""Small server-rendered SVG charts (no chart library, no script)."""

from __future__ import annotations

from html import escape

from markupsafe import Markup

from vendhub.domain.money import rupiah
from vendhub.entrypoints.web.render import svg


def bar_chart(
    points: list[tuple[str, int]], *, width: int = 960, height: int = 240, test_id: str = ""
) -> Markup:
    """Bars with a money value over each and the label under it."""
    pad_top, pad_bottom, gap = 26, 28, 6
    n = max(1, len(points))
    top = max([v for _, v in points] + [1])
    bar_w = (width - gap * (n + 1)) / n
    usable = height - pad_top - pad_bottom
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'data-testid="{escape(test_id)}" aria-label="chart" xmlns="http://www.w3.org/2000/svg">',
        f'<line x1="0" y1="{height - pad_bottom}" x2="{width}" y2="{height - pad_bottom}" '
        'class="axis"/>',
    ]
    for i, (label, value) in enumerate(points):
        h = usable * value / top
        x = gap + i * (bar_w + gap)
        y = height - pad_bottom - h
        parts.append(
            f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
            f'rx="3"><title>{escape(label)}: {escape(rupiah(value))}</title></rect>'
        )
        if value:
            short = f"{value / 1000:.0f}k" if value >= 1000 else str(value)
            parts.append(
                f'<text class="value" x="{x + bar_w / 2:.1f}" y="{y - 6:.1f}">{short}</text>'
            )
        parts.append(
            f'<text class="label" x="{x + bar_w / 2:.1f}" y="{height - 9}">{escape(label)}</text>'
        )
    parts.append("</svg>")
    return svg("".join(parts))


def line_chart(
    series: list[tuple[str, list[float | None]]],
    labels: list[str],
    *,
    width: int = 520,
    height: int = 200,
    test_id: str = "",
) -> Markup:
    """One polyline per series over shared x labels, each scaled to its own range."""
    pad, pad_bottom = 24, 26
    n = max(2, len(labels))
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'data-testid="{escape(test_id)}" xmlns="http://www.w3.org/2000/svg">',
        f'<line x1="0" y1="{height - pad_bottom}" x2="{width}" y2="{height - pad_bottom}" '
        'class="axis"/>',
    ]
    for k, (name, values) in enumerate(series):
        known = [v for v in values if v is not None]
        if not known:
            continue
        low, high = min(known), max(known)
        span = (high - low) or 1.0
        points = [
            f"{pad + i * (width - 2 * pad) / (n - 1):.1f},"
            f"{pad + (height - pad - pad_bottom) * (1 - (v - low) / span):.1f}"
            for i, v in enumerate(values)
            if v is not None
        ]
        parts.append(f'<polyline class="series s{k}" points="{" ".join(points)}"/>')
        if len(points) <= 2:  # a line needs two points; show lone readings as dots
            for point in points:
                cx, cy = point.split(",")
                parts.append(f'<circle class="s{k}" cx="{cx}" cy="{cy}" r="4"/>')
        parts.append(
            f'<text class="legend s{k}" x="{pad + k * 200}" y="14">'
            f"{escape(name)} {low:.1f}–{high:.1f}</text>"
        )
    if labels:
        edges = [(0, "first")] + ([(len(labels) - 1, "last")] if len(labels) > 1 else [])
        for i, edge in edges:
            x = pad + i * (width - 2 * pad) / (n - 1)
            parts.append(
                f'<text class="label {edge}" x="{x:.1f}" y="{height - 8}">'
                f"{escape(labels[i])}</text>"
            )
    parts.append("</svg>")
    return svg("".join(parts))
