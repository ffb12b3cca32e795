"""Settings: the seed's variable names, URL resolution, refusing unsafe production config."""

from __future__ import annotations

import pytest

from vendhub.config import Settings, normalise_database_url


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    for name in (
        "DATABASE_URL",
        "DB_HOST",
        "USE_SUPABASE",
        "SUPABASE_DB_URL",
        "NODE_ENV",
        "APP_ENV",
        "JWT_SECRET",
        "ADMIN_PASSWORD",
        "PAYMENT_PROVIDER",
        "MIDTRANS_SERVER_KEY",
        "MQTT_BROKER_URL",
        "DEBUG_ENDPOINTS",
        "PORT",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(str(tmp_path))  # no stray .env


def test_defaults_are_the_embedded_development_setup() -> None:
    s = Settings()
    assert s.port == 3001
    assert s.resolved_database_url == "sqlite+aiosqlite:///vendhub.db"
    assert s.embedded_broker and not s.is_production and s.debug_enabled


def test_seed_db_variables_build_a_mysql_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_HOST", "db.local")
    monkeypatch.setenv("DB_USER", "vend")
    monkeypatch.setenv("DB_PASSWORD", "p@ss word")
    monkeypatch.setenv("DB_NAME", "vending_machine")
    url = Settings().resolved_database_url
    assert url == "mysql+aiomysql://vend:p%40ss+word@db.local:3306/vending_machine?charset=utf8mb4"


def test_database_url_wins_and_plain_schemes_get_async_drivers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DB_HOST", "ignored")
    monkeypatch.setenv("DATABASE_URL", "postgres://u@h/db")
    assert Settings().resolved_database_url == "postgresql+asyncpg://u@h/db"
    assert normalise_database_url("mysql://r@h/d") == "mysql+aiomysql://r@h/d"


def test_supabase_url_is_used_when_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USE_SUPABASE", "true")
    monkeypatch.setenv("SUPABASE_DB_URL", "postgresql://s@db.supabase.co/postgres")
    assert Settings().resolved_database_url.startswith("postgresql+asyncpg://s@db.supabase.co")


def test_node_env_production_refuses_default_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODE_ENV", "production")
    with pytest.raises(ValueError, match="JWT_SECRET") as err:
        Settings()
    assert "ADMIN_PASSWORD" in str(err.value)


def test_production_with_real_secrets_starts_without_debug_endpoints(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.setenv("JWT_SECRET", "a-very-long-random-secret-value")
    monkeypatch.setenv("ADMIN_PASSWORD", "another-long-secret")
    monkeypatch.setenv("PAYMENT_PROVIDER", "midtrans")
    monkeypatch.setenv("MIDTRANS_SERVER_KEY", "Mid-server-real")
    s = Settings()
    assert s.is_production and not s.debug_enabled


def test_production_refuses_the_sandbox_payment_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.setenv("JWT_SECRET", "a-very-long-random-secret-value")
    monkeypatch.setenv("ADMIN_PASSWORD", "another-long-secret")
    with pytest.raises(ValueError, match="sandbox"):
        Settings()


def test_external_broker_urls_are_shown_without_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MQTT_BROKER_URL", "mqtts://user:secret@broker.example:8883")
    s = Settings()
    assert not s.embedded_broker
    assert s.broker_display == "mqtts://broker.example:8883"
