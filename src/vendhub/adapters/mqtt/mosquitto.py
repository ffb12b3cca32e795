"""Mosquitto's password hashes and a complete broker configuration: conf, passwords, ACLs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from vendhub.protocol.topics import TopicKind, topic

# mosquitto_passwd (Mosquitto 2) writes `user:$7$ITERATIONS$base64(salt)$base64(sha512 hash)`:
# PBKDF2-HMAC-SHA512, 12-byte salt, 64-byte hash. It reads any iteration count from the line;
# the passwords we issue are 192 random bits, so the count only has to be a sane default.
HASH_ID = "7"
ITERATIONS = 1000
SALT_BYTES = 12
HASH_BYTES = 64

# What a machine's login may do, on its own topics only (protocol/topics.py).
DEVICE_WRITES = (TopicKind.DISPENSE_RESULT, TopicKind.TELEMETRY, TopicKind.STATUS)
DEVICE_READS = (TopicKind.COMMAND, TopicKind.CONFIG)

CONF = "mosquitto.conf"
DEVICE_PASSWORDS = "devices.passwd"
DEVICE_ACL = "devices.acl"
BACKEND_PASSWORDS = "backend.passwd"
BACKEND_ACL = "backend.acl"
SECRET_FILES = (DEVICE_PASSWORDS, BACKEND_PASSWORDS)


def new_password() -> str:
    """32 URL-safe characters (192 bits): fits PubSubClient and any config file."""
    return secrets.token_urlsafe(24)


def hash_password(password: str, *, iterations: int = ITERATIONS, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else os.urandom(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, HASH_BYTES)
    encoded = base64.b64encode(digest).decode()
    return f"${HASH_ID}${iterations}${base64.b64encode(salt).decode()}${encoded}"


def verify_password(password: str, encoded: str) -> bool:
    """True when `password` matches a `$7$` hash (as Mosquitto checks it)."""
    parts = encoded.split("$")
    if len(parts) != 5 or parts[0] or parts[1] != HASH_ID or not parts[2].isdigit():
        return False
    try:
        salt = base64.b64decode(parts[3], validate=True)
        expected = base64.b64decode(parts[4], validate=True)
    except ValueError:
        return False
    if not salt or not expected or not 1 <= int(parts[2]) <= 10_000_000:
        return False
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(parts[2]), len(expected))
    return hmac.compare_digest(digest, expected)


class BrokerConfigError(ValueError):
    """The broker configuration cannot be written as asked (e.g. no backend credentials)."""


@dataclass(frozen=True)
class BrokerLayout:
    """Two listeners: devices (client id forced to the username) and the backend's own."""

    directory: Path
    prefix: str
    backend_username: str
    backend_password_hash: str
    machines: list[tuple[str, str]] = field(default_factory=list)  # (machine id, hash)
    port: int = 1883
    bind: str = "0.0.0.0"
    backend_port: int = 1884
    backend_bind: str = "127.0.0.1"
    # Mosquitto started as root drops to this user, which must read the password files.
    user: str = "mosquitto"
    # PEM files: with both, the device listener speaks TLS only (mqtts://).
    certfile: Path | None = None
    keyfile: Path | None = None

    def __post_init__(self) -> None:
        if (self.certfile is None) != (self.keyfile is None):
            raise BrokerConfigError("TLS needs both a certificate and its key")
        if self.port == self.backend_port:
            raise BrokerConfigError("the device and backend listeners need different ports")
        names = (self.prefix, self.backend_username, self.bind, self.backend_bind, self.user)
        for value in names:
            if not value or any(c.isspace() or c in "#+" for c in value):
                raise BrokerConfigError(f"{value!r} cannot be written into a Mosquitto file")


def render(layout: BrokerLayout) -> dict[str, str]:
    """File name → content, for everything `mosquitto -c DIR/mosquitto.conf` needs."""
    d = layout.directory.resolve()
    tls = ""
    if layout.certfile is not None and layout.keyfile is not None:
        tls = f"certfile {layout.certfile.resolve()}\nkeyfile {layout.keyfile.resolve()}\n"
    conf = f"""# Written by `vendhub broker config`; run it again (then SIGHUP) instead of editing.
per_listener_settings true
user {layout.user}
persistence true
persistence_location {d / "data"}/
log_dest stderr
log_type error
log_type warning
log_type notice

# Machines: username = machine id, and Mosquitto makes the client id the username, so no
# device login can take over another client's session (the backend's included).
listener {layout.port} {layout.bind}
allow_anonymous false
use_username_as_clientid true
password_file {d / DEVICE_PASSWORDS}
acl_file {d / DEVICE_ACL}
{tls}
# The backend only (MQTT_USERNAME): {layout.prefix}/#. Its client ids are its own to choose
# (one per replica), and only this listener's password file knows its user.
listener {layout.backend_port} {layout.backend_bind}
allow_anonymous false
password_file {d / BACKEND_PASSWORDS}
acl_file {d / BACKEND_ACL}
"""
    device_acl = ["# A machine publishes its results, telemetry, status; reads its commands."]
    for machine_id, _ in layout.machines:
        device_acl.append(f"\nuser {machine_id}")
        device_acl += [f"topic write {topic(layout.prefix, machine_id, k)}" for k in DEVICE_WRITES]
        device_acl += [f"topic read {topic(layout.prefix, machine_id, k)}" for k in DEVICE_READS]
    return {
        CONF: conf,
        DEVICE_PASSWORDS: "".join(f"{m}:{h}\n" for m, h in layout.machines),
        DEVICE_ACL: "\n".join(device_acl) + "\n",
        BACKEND_PASSWORDS: f"{layout.backend_username}:{layout.backend_password_hash}\n",
        BACKEND_ACL: f"user {layout.backend_username}\ntopic readwrite {layout.prefix}/#\n",
    }


def write(layout: BrokerLayout) -> list[Path]:
    """Write every file atomically (a SIGHUP mid-write must never see half a password file).

    Run as root, the password files and the data directory are given to `layout.user`, the
    account Mosquitto drops to; otherwise Mosquitto runs as us and reads our own files."""
    owner = _owner(layout.user) if os.geteuid() == 0 else None
    layout.directory.mkdir(parents=True, exist_ok=True)
    data = layout.directory / "data"
    data.mkdir(exist_ok=True)
    if owner is not None:
        os.chown(data, *owner)
    written = []
    for name, text in render(layout).items():
        path = layout.directory / name
        tmp = path.with_name(f".{name}.tmp")
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if name in SECRET_FILES else 0o644
        )
        with os.fdopen(fd, "w") as out:
            out.write(text)
        if owner is not None and name in SECRET_FILES:
            os.chown(tmp, *owner)
        os.replace(tmp, path)
        written.append(path)
    return written


def _owner(user: str) -> tuple[int, int]:
    import pwd

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise BrokerConfigError(
            f"no system user {user!r} for Mosquitto to run as; pass --user"
        ) from None
    return entry.pw_uid, entry.pw_gid
