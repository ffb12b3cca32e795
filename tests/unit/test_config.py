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
        "MQTT_USERNAME",
        "MQTT_PASSWORD",
        "MIDTRANS_CLIENT_KEY",
        "MIDTRANS_IS_PRODUCTION",
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
    assert s.mqtt_embedded_bind == "127.0.0.1"  # the demo broker is not on the network


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
    monkeypatch.setenv("MIDTRANS_IS_PRODUCTION", "true")
    monkeypatch.setenv("MQTT_BROKER_URL", "mqtts://broker.example:8883")
    monkeypatch.setenv("MQTT_USERNAME", "vendhub")
    monkeypatch.setenv("MQTT_PASSWORD", "broker-secret")
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


def production(monkeypatch: pytest.MonkeyPatch, **overrides: str) -> None:
    """A production environment that starts, then `overrides` (empty string: unset)."""
    values = {
        "APP_ENV": "production",
        "JWT_SECRET": "a-very-long-random-secret-value",
        "ADMIN_PASSWORD": "another-long-secret",
        "PAYMENT_PROVIDER": "midtrans",
        "MIDTRANS_SERVER_KEY": "Mid-server-real",
        "MIDTRANS_CLIENT_KEY": "Mid-client-real",
        "MIDTRANS_IS_PRODUCTION": "true",
        "MQTT_BROKER_URL": "mqtts://broker.example:8883",
        "MQTT_USERNAME": "vendhub",
        "MQTT_PASSWORD": "broker-secret",
    }
    values.update(overrides)
    for name, value in values.items():
        if value:
            monkeypatch.setenv(name, value)
        else:
            monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("value", ["prod", "staging", "Production-1", "", "dev", "live"])
@pytest.mark.parametrize("name", ["APP_ENV", "NODE_ENV"])
def test_an_unknown_environment_refuses_to_start_instead_of_meaning_development(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=f"{name}=.*is not one of development, test, production"):
        Settings()


@pytest.mark.parametrize("value", ["production ", " PRODUCTION", "Production\t"])
def test_production_is_recognised_trimmed_and_in_any_case(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    production(monkeypatch, APP_ENV=value)
    assert Settings().is_production
    production(monkeypatch, APP_ENV="", NODE_ENV=value)
    assert Settings().is_production


@pytest.mark.parametrize("value", ["development", "test", " Test ", "DEVELOPMENT"])
def test_development_and_test_are_accepted(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("APP_ENV", value)
    assert not Settings().is_production


def test_app_env_and_node_env_that_disagree_refuse_to_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("APP_ENV", "development")
    monkeypatch.setenv("NODE_ENV", "production")
    with pytest.raises(ValueError, match="disagree"):
        Settings()


def test_the_complete_production_environment_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    production(monkeypatch)
    s = Settings()
    assert s.is_production and s.mqtt_credentials_set and not s.embedded_broker


@pytest.mark.parametrize("url", ["", "embedded", "EMBEDDED "])
def test_production_refuses_the_embedded_broker(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    production(monkeypatch, MQTT_BROKER_URL=url)
    with pytest.raises(ValueError, match="embedded MQTT broker is for the demo only"):
        Settings()


@pytest.mark.parametrize("missing", ["MQTT_USERNAME", "MQTT_PASSWORD"])
def test_production_refuses_a_broker_without_credentials(
    monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    production(monkeypatch, **{missing: ""})
    with pytest.raises(ValueError, match="MQTT_USERNAME and MQTT_PASSWORD must be set"):
        Settings()


def test_production_accepts_broker_credentials_in_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    production(
        monkeypatch,
        MQTT_USERNAME="",
        MQTT_PASSWORD="",
        MQTT_BROKER_URL="mqtts://vendhub:s3cret@broker.example:8883",
    )
    assert Settings().mqtt_credentials_set


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"MIDTRANS_SERVER_KEY": "SB-Mid-server-abc"}, "SERVER_KEY is not a production key"),
        (
            {"MIDTRANS_SERVER_KEY": "Mid-server-abc", "MIDTRANS_IS_PRODUCTION": "false"},
            "SERVER_KEY is not a sandbox key",
        ),
        ({"MIDTRANS_SERVER_KEY": "Mid-client-abc"}, "SERVER_KEY is a client key"),
        ({"MIDTRANS_SERVER_KEY": "SB-Mid-client-abc"}, "SERVER_KEY is a client key"),
        ({"MIDTRANS_CLIENT_KEY": "SB-Mid-client-abc"}, "CLIENT_KEY is not a production key"),
        ({"MIDTRANS_CLIENT_KEY": "Mid-server-abc"}, "CLIENT_KEY is a server key"),
    ],
)
def test_production_refuses_midtrans_keys_that_do_not_match_the_gateway_mode(
    monkeypatch: pytest.MonkeyPatch, overrides: dict[str, str], problem: str
) -> None:
    production(monkeypatch, **overrides)
    with pytest.raises(ValueError, match=problem):
        Settings()


def test_production_accepts_matching_sandbox_keys_in_sandbox_mode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    production(
        monkeypatch,
        MIDTRANS_SERVER_KEY="SB-Mid-server-abc",
        MIDTRANS_CLIENT_KEY="SB-Mid-client-abc",
        MIDTRANS_IS_PRODUCTION="false",
    )
    assert Settings().is_production


def test_every_production_problem_is_named_in_one_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    from vendhub.entrypoints.cli import config_error_line

    production(
        monkeypatch,
        MQTT_BROKER_URL="embedded",
        JWT_SECRET="",
        MIDTRANS_SERVER_KEY="SB-Mid-server-x",
    )
    with pytest.raises(ValueError) as err:
        Settings()
    line = config_error_line(err.value)
    assert "\n" not in line
    for part in ("embedded MQTT broker", "JWT_SECRET", "MIDTRANS_SERVER_KEY"):
        assert part in line
