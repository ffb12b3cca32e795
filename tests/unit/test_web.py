"""Pure helpers of the pages: money format, charts, texts, CSRF tokens, redirects, grants."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from vendhub.domain.money import rupiah
from vendhub.entrypoints.web import i18n
from vendhub.entrypoints.web.charts import bar_chart, line_chart
from vendhub.entrypoints.web.console import safe_next
from vendhub.entrypoints.web.render import local_time
from vendhub.entrypoints.web.session import csrf_token, same
from vendhub.services.auth import Role, may_grant


def test_money_is_shown_the_indonesian_way() -> None:
    assert rupiah(4000) == "Rp 4.000"
    assert rupiah(1234567) == "Rp 1.234.567"
    assert rupiah(0) == "Rp 0"
    assert rupiah(-4500) == "-Rp 4.500"
    assert rupiah(None) == "–"


def test_times_are_shown_in_the_display_zone() -> None:
    moment = datetime(2026, 11, 26, 18, 30, tzinfo=UTC)
    assert local_time(moment, ZoneInfo("Asia/Jakarta")) == "2026-11-27 01:30"
    assert local_time(None, ZoneInfo("Asia/Jakarta")) == "–"


def test_every_kiosk_text_exists_in_both_languages_and_unknown_languages_fall_back() -> None:
    assert set(i18n.TEXTS["id"]) == set(i18n.TEXTS["en"])
    assert i18n.pick("en") == "en"
    assert i18n.pick("fr") == i18n.pick(None) == "id"
    # Keys must not shadow dict methods: Jinja's t.clear would find dict.clear.
    assert not set(i18n.TEXTS["id"]) & set(dir(dict))


def test_the_bar_chart_draws_one_bar_per_point_scaled_to_the_largest() -> None:
    chart = str(bar_chart([("a", 0), ("b", 5000), ("<c>", 10000)], test_id="sales-chart"))
    assert chart.count('class="bar"') == 3
    assert 'data-testid="sales-chart"' in chart
    assert "&lt;c&gt;" in chart and "<c>" not in chart
    heights = [float(h) for h in re.findall(r'class="bar"[^>]*? height="([0-9.]+)"', chart)]
    assert heights[0] == 0 and heights[2] == 2 * heights[1]


def test_the_line_chart_skips_missing_readings_and_series_without_any() -> None:
    chart = str(line_chart([("t", [1.0, None, 3.0]), ("h", [None, None, None])], ["x", "y", "z"]))
    assert chart.count("<polyline") == 1
    assert chart.split('points="')[1].split('"')[0].count(",") == 2


def test_csrf_tokens_are_bound_to_the_session_and_compared_in_constant_time() -> None:
    token = csrf_token("session-a", "secret")
    assert token == csrf_token("session-a", "secret")
    assert token != csrf_token("session-b", "secret")
    assert token != csrf_token("session-a", "other-secret")
    assert same(token, token) and not same(token, "x") and not same(None, None)
    assert not same("", "")


def test_after_sign_in_only_console_paths_are_followed() -> None:
    assert safe_next("/console/orders?status=PAID") == "/console/orders?status=PAID"
    for hostile in ("https://evil.example", "//evil.example/console", "/api/orders", None, ""):
        assert safe_next(hostile) == "/console"


def test_only_a_super_admin_grants_super_admin() -> None:
    assert may_grant(Role.SUPER_ADMIN.value, Role.SUPER_ADMIN)
    assert not may_grant(Role.ADMIN.value, Role.SUPER_ADMIN)
    assert may_grant(Role.ADMIN.value, Role.TECHNICIAN)
