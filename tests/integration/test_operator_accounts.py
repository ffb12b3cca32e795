"""Operators' accounts over HTTP: login throttling, equal work, users API, instant revocation."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.integration.helpers import add_user, api_client, assert_error
from vendhub.services import auth

pytestmark = pytest.mark.integration


@dataclass
class Accounts:
    client: httpx.AsyncClient
    container: Any

    async def login(self, username: str, password: str, **headers: str) -> httpx.Response:
        return await self.client.post(
            "/api/auth/login", json={"username": username, "password": password}, headers=headers
        )

    async def token(self, username: str, password: str) -> dict[str, str]:
        response = await self.login(username, password)
        assert response.status_code == 200, response.text
        return {"Authorization": f"Bearer {response.json()['token']}"}


@pytest.fixture
async def accounts(
    engine: Any, backend: str, database_urls: dict[str, str]
) -> AsyncIterator[Accounts]:
    async with api_client(
        database_urls[backend],
        login_limit_per_username="3/minute",
        login_limit_per_client="8/minute",
        trusted_proxies="127.0.0.0/8",
    ) as (client, container):
        await add_user(container.ctx, "boss", "boss-pass-1", "SUPER_ADMIN")
        await add_user(container.ctx, "adm", "adm-pass-12", "ADMIN")
        await add_user(container.ctx, "tech", "tech-pass-1", "TECHNICIAN")
        yield Accounts(client, container)


async def test_failed_logins_are_throttled_per_username_with_retry_after(
    accounts: Accounts,
) -> None:
    for n in range(3):
        wrong = await accounts.login("tech", "wrong-pass", **{"X-Forwarded-For": f"10.0.0.{n}"})
        assert_error(wrong, 401, "unauthorized")
    # From anywhere, even with the right password: the username is locked for a while.
    locked = await accounts.login("tech", "tech-pass-1", **{"X-Forwarded-For": "10.0.1.1"})
    assert_error(locked, 429, "rate_limited")
    assert 1 <= int(locked.headers["Retry-After"]) <= 60
    # Other accounts are unaffected.
    assert (await accounts.login("adm", "adm-pass-12")).status_code == 200


async def test_login_attempts_are_throttled_per_client(accounts: Accounts) -> None:
    spray = {"X-Forwarded-For": "10.2.2.2"}
    for n in range(8):
        response = await accounts.login(f"guess{n}", "password1", **spray)
        assert_error(response, 401)
    refused = await accounts.login("boss", "boss-pass-1", **spray)
    assert_error(refused, 429, "rate_limited")
    assert int(refused.headers["Retry-After"]) >= 1
    # Another client logs in fine.
    assert (await accounts.login("boss", "boss-pass-1")).status_code == 200


async def test_unknown_users_cost_the_same_argon2_work_off_the_event_loop(
    accounts: Accounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, bool]] = []
    real = auth._hasher

    class Spy:
        """The real hasher, noting which hash each verification used and on which thread."""

        def hash(self, password: str) -> str:
            return real.hash(password)

        def verify(self, stored: str, password: str) -> bool:
            calls.append((stored, threading.current_thread() is threading.main_thread()))
            return real.verify(stored, password)

    monkeypatch.setattr(auth, "_hasher", Spy())
    assert_error(await accounts.login("nobody-at-all", "some-password"), 401, "unauthorized")
    assert_error(await accounts.login("tech", "wrong-pass"), 401, "unauthorized")
    assert len(calls) == 2
    (unknown_hash, unknown_on_loop), (known_hash, known_on_loop) = calls
    # The unknown user was verified against a real argon2id hash with the same parameters.
    assert unknown_hash.startswith("$argon2id$") and unknown_hash != known_hash
    assert unknown_hash.split("$")[3] == known_hash.split("$")[3]
    # And neither verification ran on the event loop's thread.
    assert not unknown_on_loop and not known_on_loop


async def test_users_can_be_listed_deactivated_and_their_tokens_stop_at_once(
    accounts: Accounts,
) -> None:
    boss = await accounts.token("boss", "boss-pass-1")
    tech = await accounts.token("tech", "tech-pass-1")
    listed = (await accounts.client.get("/api/auth/users", headers=boss)).json()["data"]
    by_name = {u["username"]: u for u in listed}
    assert {"boss", "adm", "tech"} <= set(by_name)
    assert all("password_hash" not in u for u in listed)
    assert_error(await accounts.client.get("/api/auth/users", headers=tech), 403)

    assert (await accounts.client.get("/api/auth/me", headers=tech)).status_code == 200
    tech_id = by_name["tech"]["id"]
    off = await accounts.client.patch(
        f"/api/auth/users/{tech_id}", json={"is_active": False}, headers=boss
    )
    assert off.status_code == 200 and off.json()["is_active"] is False
    assert_error(await accounts.client.get("/api/auth/me", headers=tech), 401, "unauthorized")
    assert_error(await accounts.login("tech", "tech-pass-1"), 401)
    on = await accounts.client.patch(
        f"/api/auth/users/{tech_id}", json={"is_active": True}, headers=boss
    )
    assert on.status_code == 200
    # Reactivation does not revive the old token.
    assert_error(await accounts.client.get("/api/auth/me", headers=tech), 401)
    assert (await accounts.login("tech", "tech-pass-1")).status_code == 200


async def test_a_password_change_revokes_old_tokens_and_the_new_password_works(
    accounts: Accounts,
) -> None:
    boss = await accounts.token("boss", "boss-pass-1")
    tech = await accounts.token("tech", "tech-pass-1")
    tech_id = (await accounts.client.get("/api/auth/me", headers=tech)).json()["id"]
    changed = await accounts.client.patch(
        f"/api/auth/users/{tech_id}", json={"password": "brand-new-pass"}, headers=boss
    )
    assert changed.status_code == 200
    assert_error(await accounts.client.get("/api/auth/me", headers=tech), 401)
    assert_error(await accounts.login("tech", "tech-pass-1"), 401)
    assert (await accounts.login("tech", "brand-new-pass")).status_code == 200
    short = await accounts.client.patch(
        f"/api/auth/users/{tech_id}", json={"password": "short"}, headers=boss
    )
    assert_error(short, 422)


async def test_a_deleted_user_token_stops_and_a_demotion_applies_at_once(
    accounts: Accounts,
) -> None:
    boss = await accounts.token("boss", "boss-pass-1")
    adm = await accounts.token("adm", "adm-pass-12")
    adm_id = (await accounts.client.get("/api/auth/me", headers=adm)).json()["id"]
    demoted = await accounts.client.patch(
        f"/api/auth/users/{adm_id}", json={"role": "AUDITOR"}, headers=boss
    )
    assert demoted.status_code == 200 and demoted.json()["role"] == "AUDITOR"
    assert_error(await accounts.client.get("/api/auth/users", headers=adm), 401)
    adm = await accounts.token("adm", "adm-pass-12")
    assert_error(await accounts.client.get("/api/auth/users", headers=adm), 403)

    tech = await accounts.token("tech", "tech-pass-1")
    tech_id = (await accounts.client.get("/api/auth/me", headers=tech)).json()["id"]
    deleted = await accounts.client.delete(f"/api/auth/users/{tech_id}", headers=boss)
    assert deleted.status_code == 204
    assert_error(await accounts.client.get("/api/auth/me", headers=tech), 401)
    assert_error(await accounts.client.delete(f"/api/auth/users/{tech_id}", headers=boss), 404)
    assert_error(await accounts.login("tech", "tech-pass-1"), 401)


async def test_only_a_super_admin_creates_or_promotes_a_super_admin(accounts: Accounts) -> None:
    boss = await accounts.token("boss", "boss-pass-1")
    adm = await accounts.token("adm", "adm-pass-12")
    users = {
        u["username"]: u["id"]
        for u in (await accounts.client.get("/api/auth/users", headers=boss)).json()["data"]
    }
    new_super = {"username": "root2", "password": "root2-pass", "role": "SUPER_ADMIN"}
    assert_error(await accounts.client.post("/api/auth/users", json=new_super, headers=adm), 403)
    promote = {"role": "SUPER_ADMIN"}
    url = f"/api/auth/users/{users['tech']}"
    assert_error(await accounts.client.patch(url, json=promote, headers=adm), 403)
    # Nor may an ADMIN change or remove a SUPER_ADMIN account.
    boss_url = f"/api/auth/users/{users['boss']}"
    assert_error(await accounts.client.patch(boss_url, json={"is_active": False}, headers=adm), 403)
    assert_error(await accounts.client.delete(boss_url, headers=adm), 403)
    # An ADMIN manages the lower roles.
    made = await accounts.client.post(
        "/api/auth/users",
        json={"username": "stock1", "password": "stock-pass-1", "role": "INVENTORY"},
        headers=adm,
    )
    assert made.status_code == 201
    # The SUPER_ADMIN may do both.
    assert (
        await accounts.client.post("/api/auth/users", json=new_super, headers=boss)
    ).status_code == 201
    promoted = await accounts.client.patch(url, json=promote, headers=boss)
    assert promoted.status_code == 200 and promoted.json()["role"] == "SUPER_ADMIN"
    # Nobody locks themselves out.
    own = await accounts.client.patch(boss_url, json={"is_active": False}, headers=boss)
    assert_error(own, 409, "conflict")
    assert_error(await accounts.client.delete(boss_url, headers=boss), 409)
    assert_error(await accounts.client.patch(boss_url, json={"is_active": None}, headers=boss), 422)


async def test_two_processes_bootstrapping_the_admin_at_once_both_start(ctx: Any) -> None:
    """`serve --workers N` (or replicas) start together on an empty users table: one creates
    the admin, the other finds it created and carries on instead of failing its startup."""
    import asyncio

    created = await asyncio.gather(
        auth.ensure_admin(ctx, "admin", "admin-pass-123"),
        auth.ensure_admin(ctx, "admin", "admin-pass-123"),
    )
    assert sorted(created) == [False, True]
