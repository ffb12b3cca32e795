"""Settings from the environment and `.env`, keeping the seed's variable names."""

from __future__ import annotations

import re
import socket
from functools import cached_property
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Literal
from urllib.parse import quote_plus, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_JWT_SECRET = "dev-insecure-jwt-secret-change-me"
DEV_ADMIN_PASSWORD = "admin123"
DEV_SANDBOX_SERVER_KEY = "SB-Mid-server-vendhub-sandbox-key"
EMBEDDED = "embedded"
ENVIRONMENTS = ("development", "test", "production")
MQTT_SCHEMES = ("mqtt", "mqtts", "tcp", "ssl", "tls")


class ConfigError(ValueError):
    """The configuration cannot run (e.g. production with default secrets)."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    # Server (seed names)
    port: int = Field(default=3001, ge=1, le=65535)
    # `vendhub serve` processes sharing the HTTP port (>1 needs a server database and an
    # external broker with shared subscriptions; see README "Several replicas").
    serve_workers: int = Field(default=1, ge=1, le=64)
    host: str = "127.0.0.1"
    node_env: str | None = None
    app_env: str | None = None
    public_base_url: str | None = None  # how customers reach us (payment pages)

    # Database
    database_url: str | None = None
    use_supabase: bool = False
    supabase_db_url: str | None = None
    db_host: str | None = None
    db_port: int = 3306
    db_name: str = "vending_machine"
    db_user: str = "root"
    db_password: str = ""
    sqlite_path: str = "vendhub.db"

    # MQTT
    mqtt_broker_url: str = EMBEDDED
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    mqtt_topic_prefix: str = "vm"
    mqtt_client_id: str | None = None  # default: vendhub-{hostname}-{REPLICA_ID or PORT}
    replica_id: str | None = None
    mqtt_share_group: str | None = None  # default: "vendhub" on an external broker; "none": off
    mqtt_sync_per_s: float = Field(default=20.0, gt=0)
    mqtt_embedded_bind: str = "127.0.0.1"
    mqtt_embedded_port: int = 1883
    mqtt_publish_timeout_s: float = 10.0
    # Webhooks worked on at once; more are shed with 503 + Retry-After (the gateway retries).
    webhook_max_inflight: int = Field(default=64, ge=1)
    # Of those, worked on at once (the others wait their turn, FIFO).
    webhook_concurrency: int = Field(default=3, ge=1)
    machine_id: str = "VM01"

    # Auth
    jwt_secret: str = DEV_JWT_SECRET
    jwt_expire_minutes: int = 12 * 60
    admin_username: str = "admin"
    admin_password: str = DEV_ADMIN_PASSWORD

    # Payments
    payment_provider: Literal["sandbox", "midtrans"] = "sandbox"
    midtrans_server_key: str = ""
    midtrans_client_key: str = ""
    midtrans_is_production: bool = False
    midtrans_api_base_url: str | None = None
    midtrans_snap_base_url: str | None = None
    midtrans_timeout_s: float = Field(default=15.0, gt=0)
    order_ttl_s: int = Field(default=15 * 60, ge=60)
    late_payment_policy: Literal["refund", "dispense"] = "refund"
    reconcile_after_s: int = Field(default=120, ge=0)
    reconcile_every_s: int = Field(default=60, ge=1)
    refund_max_attempts: int = Field(default=5, ge=1)
    refund_backoff_s: int = Field(default=30, ge=1)
    refund_backoff_max_s: int = Field(default=3600, ge=1)
    payment_jobs_tick_s: float = Field(default=5.0, gt=0)

    # Protocol timeouts (protocol.md)
    motor_margin_ms: int = 650
    result_grace_ms: int = 5000
    dispense_max_attempts: int = Field(default=3, ge=1)
    command_ttl_s: int = Field(default=120, ge=5)
    dispense_queue_ttl_s: int = Field(default=600, ge=10)
    default_telemetry_interval_s: int = 60

    # Telemetry retention (services/retention.py)
    telemetry_retention_days: int = Field(default=14, ge=1)
    telemetry_rollup_retention_days: int = Field(default=400, ge=1)
    telemetry_prune_batch: int = Field(default=5000, ge=1)
    telemetry_prune_every_s: float = Field(default=300.0, gt=0)

    debug_endpoints: bool | None = None
    max_body_bytes: int = 64 * 1024
    log_level: str = "INFO"
    # Console times and the finance day boundaries are shown in this zone (IANA name).
    display_tz: str = "Asia/Jakarta"

    @field_validator("display_tz")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"DISPLAY_TZ {value!r} is not an IANA time zone") from None
        return value

    @field_validator("mqtt_broker_url")
    @classmethod
    def _broker_url_parses(cls, value: str) -> str:
        if value.strip().lower() in ("", EMBEDDED):
            return value
        parts = urlsplit(value.strip())
        try:
            parts.port  # noqa: B018 - raises ValueError on a port that is not a number
        except ValueError:
            raise ValueError(f"{value!r} has an invalid port") from None
        if parts.scheme not in MQTT_SCHEMES or not parts.hostname:
            raise ValueError(
                f"{value!r} is not a broker URL: use mqtt://host:1883, mqtts://host:8883 "
                f"or {EMBEDDED!r}"
            )
        return value.strip()

    # Security: abuse limits, operator accounts, input limits, headers (README "Security").
    redis_url: str | None = None  # rate-limit counters shared by replicas; memory if unset
    trusted_proxies: str = ""  # CIDRs whose X-Forwarded-For we believe, comma-separated
    rate_limit_default: str = "120/minute"  # every request, per client address
    rate_limit_orders: str = "10/minute"  # order creation and cancellation, per client
    rate_limit_webhook: str = "600/minute"  # payment notifications, per client
    login_limit_per_username: str = "5/minute"  # failed logins of one username
    login_limit_per_client: str = "20/minute"  # login attempts from one client
    anon_max_unpaid_units: int = Field(default=2, ge=1, le=100)
    cors_origins: str = ""  # comma-separated origins allowed by CORS; none when empty
    metrics_token: str | None = None  # when set, /metrics needs "Authorization: Bearer …"
    max_json_depth: int = Field(default=32, ge=2, le=1000)

    @model_validator(mode="after")
    def _check_security_settings(self) -> Settings:
        from limits import parse

        for name in (
            "rate_limit_default",
            "rate_limit_orders",
            "rate_limit_webhook",
            "login_limit_per_username",
            "login_limit_per_client",
        ):
            try:
                parse(getattr(self, name))
            except ValueError:
                raise ConfigError(f"{name.upper()} is not a rate such as 10/minute") from None
        try:
            self.trusted_proxy_networks  # noqa: B018 - parsed for its errors
        except ValueError as exc:
            raise ConfigError(f"TRUSTED_PROXIES: {exc}") from None
        return self

    @model_validator(mode="after")
    def _refuse_default_secrets(self) -> Settings:
        self._check_environment()
        if not self.is_production:
            return self
        problems = self._production_problems()
        if not self.jwt_secret or self.jwt_secret == DEV_JWT_SECRET or len(self.jwt_secret) < 16:
            problems.append("JWT_SECRET must be set to a secret of at least 16 characters")
        if not self.admin_password or self.admin_password == DEV_ADMIN_PASSWORD:
            problems.append("ADMIN_PASSWORD must be set to a non-default value")
        if self.payment_provider == "midtrans" and not self.midtrans_server_key:
            problems.append("MIDTRANS_SERVER_KEY must be set when PAYMENT_PROVIDER=midtrans")
        if self.payment_provider == "sandbox":
            problems.append("PAYMENT_PROVIDER=sandbox takes no real money; use midtrans")
        if problems:
            raise ConfigError("refusing to start in production: " + "; ".join(problems))
        return self

    def _check_environment(self) -> None:
        """Fail closed: a misspelt environment (`prod`, `staging`) must not mean development."""
        given = {
            name: value.strip().lower()
            for name, value in (("APP_ENV", self.app_env), ("NODE_ENV", self.node_env))
            if value is not None
        }
        for name, value in given.items():
            if value not in ENVIRONMENTS:
                raise ConfigError(
                    f"{name}={value!r} is not one of {', '.join(ENVIRONMENTS)}; refusing to start"
                )
        if len(set(given.values())) > 1:
            raise ConfigError(
                f"APP_ENV={given['APP_ENV']!r} and NODE_ENV={given['NODE_ENV']!r} disagree; "
                "refusing to start"
            )

    def _production_problems(self) -> list[str]:
        """What production refuses besides the default secrets: the broker and gateway keys."""
        problems: list[str] = []
        if self.embedded_broker:
            problems.append(
                "the embedded MQTT broker is for the demo only; set MQTT_BROKER_URL to a broker "
                "with authentication (see `vendhub broker config`)"
            )
        elif not self.mqtt_credentials_set:
            problems.append("MQTT_USERNAME and MQTT_PASSWORD must be set for the broker")
        if self.payment_provider == "midtrans":
            problems += _midtrans_key_problems(
                self.midtrans_server_key, self.midtrans_client_key, self.midtrans_is_production
            )
        return problems

    @property
    def mqtt_credentials_set(self) -> bool:
        """Both user and password, from MQTT_USERNAME/MQTT_PASSWORD or the broker URL."""
        parts = urlsplit(self.mqtt_broker_url.strip())
        user = self.mqtt_username or parts.username
        return bool(user and (self.mqtt_password or parts.password))

    @property
    def environment(self) -> str:
        return (self.app_env or self.node_env or "development").strip().lower()

    @property
    def is_production(self) -> bool:
        return self.environment == "production"

    @property
    def debug_enabled(self) -> bool:
        return self.debug_endpoints if self.debug_endpoints is not None else not self.is_production

    @cached_property
    def resolved_database_url(self) -> str:
        """DATABASE_URL, else Supabase, else the seed's DB_* (MySQL), else the SQLite file."""
        if self.database_url:
            return normalise_database_url(self.database_url)
        if self.use_supabase and self.supabase_db_url:
            return normalise_database_url(self.supabase_db_url)
        if self.db_host:
            return (
                f"mysql+aiomysql://{quote_plus(self.db_user)}:{quote_plus(self.db_password)}"
                f"@{self.db_host}:{self.db_port}/{self.db_name}?charset=utf8mb4"
            )
        return f"sqlite+aiosqlite:///{self.sqlite_path}"

    @property
    def trusted_proxy_networks(self) -> list[IPv4Network | IPv6Network]:
        return [ip_network(c.strip(), strict=False) for c in _items(self.trusted_proxies)]

    @property
    def cors_origin_list(self) -> list[str]:
        return _items(self.cors_origins)

    @property
    def embedded_broker(self) -> bool:
        return self.mqtt_broker_url.strip().lower() in ("", EMBEDDED)

    @property
    def broker_display(self) -> str:
        if self.embedded_broker:
            return f"mqtt://{self.mqtt_embedded_bind}:{self.mqtt_embedded_port} (embedded)"
        parts = urlsplit(self.mqtt_broker_url)
        return f"{parts.scheme}://{parts.hostname}:{parts.port or default_mqtt_port(parts.scheme)}"

    @property
    def client_id(self) -> str:
        """Distinct per replica, the same across its restarts (so the broker keeps its session):
        the host name, plus REPLICA_ID or, failing that, the HTTP port (replicas on one host
        listen on different ports)."""
        if self.mqtt_client_id:
            return self.mqtt_client_id
        host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:40] or "host"
        return f"vendhub-{host}-{self.replica_id or self.port}"

    @property
    def share_group(self) -> str | None:
        """Replicas share fleet-wide subscriptions; the embedded broker has no $share support."""
        if self.mqtt_share_group is not None:
            group = self.mqtt_share_group.strip()
            return None if group.lower() in ("", "none", "off") else group
        return None if self.embedded_broker else "vendhub"

    @property
    def payment_server_key(self) -> str:
        return self.midtrans_server_key or DEV_SANDBOX_SERVER_KEY

    def base_url(self) -> str:
        return (self.public_base_url or f"http://{self.host}:{self.port}").rstrip("/")


def _midtrans_key_problems(server_key: str, client_key: str, is_production: bool) -> list[str]:
    """Midtrans names its keys `[SB-]Mid-server-…` and `[SB-]Mid-client-…`; SB- is sandbox."""
    problems: list[str] = []
    want = "production" if is_production else "sandbox"
    flag = f"MIDTRANS_IS_PRODUCTION={str(is_production).lower()}"
    if "-client-" in server_key:
        problems.append("MIDTRANS_SERVER_KEY is a client key, not a server key")
    elif server_key and server_key.startswith("SB-") == is_production:
        problems.append(f"MIDTRANS_SERVER_KEY is not a {want} key but {flag}")
    if client_key and "-server-" in client_key:
        problems.append("MIDTRANS_CLIENT_KEY is a server key (it would reach browsers)")
    elif client_key and client_key.startswith("SB-") == is_production:
        problems.append(f"MIDTRANS_CLIENT_KEY is not a {want} key but {flag}")
    return problems


def _items(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def default_mqtt_port(scheme: str | None) -> int:
    return 8883 if scheme in ("mqtts", "ssl", "tls") else 1883


def normalise_database_url(url: str) -> str:
    """Accept plain postgres:// and mysql:// URLs (as Supabase and hosts hand them out)."""
    for plain, driver in (
        ("postgres://", "postgresql+asyncpg://"),
        ("postgresql://", "postgresql+asyncpg://"),
        ("mysql://", "mysql+aiomysql://"),
        ("mariadb://", "mysql+aiomysql://"),
        ("sqlite:///", "sqlite+aiosqlite:///"),
    ):
        if url.startswith(plain):
            return driver + url[len(plain) :]
    return url
