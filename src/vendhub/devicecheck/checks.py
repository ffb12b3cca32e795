"""The device obligations of protocol.md, checked one by one against a live device over MQTT."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from vendhub.devicecheck.probe import Heard, Probe, Target, read_retained
from vendhub.protocol.messages import REFUSALS, PresenceStatus, ResultError
from vendhub.protocol.topics import TopicKind

# (name, obligation) in the order they run; the names are what tests and CI logs refer to.
CHECKS: tuple[tuple[str, str], ...] = (
    ("status", "retained ONLINE status with bootId and fw"),
    ("result", "one result per dispense, with the seed fields and commandId"),
    ("resend", "without ack the result is re-sent with growing gaps"),
    ("sync", "sync re-sends unacknowledged results"),
    ("ack", "re-sending stops after ack"),
    ("repeat", "a repeated command gets the identical result and no second vend"),
    ("busy", "a different command during a vend is refused with BUSY"),
    ("repeat-in-flight", "a repeat of the command being vended: no second vend, one result"),
    ("expired", "an expired command is refused with EXPIRED"),
    ("malformed", "malformed and unknown commands are ignored; the device stays responsive"),
    ("config", "a newer retained config is applied and reported as configVersion"),
)
OBLIGATIONS = dict(CHECKS)
RESULT_FIELDS = ("commandId", "orderId", "slot", "success", "dropDetected", "durationMs", "error")


@dataclass(frozen=True)
class Timing:
    """How long to wait for what; the defaults suit protocol.md's 1 s, 2 s, 4 s backoff."""

    online_s: float = 10.0
    answer_s: float = 3.0  # a stored result re-published, a refusal
    result_grace_s: float = 10.0  # beyond timeoutMs for the result of a vend
    first_resend_s: float = 8.0
    busy_delay_s: float = 0.3  # after starting a vend, when the competing command goes out
    ignore_window_s: float = 2.0
    min_quiet_s: float = 5.0
    config_s: float = 10.0


@dataclass
class Outcome:
    name: str
    passed: bool | None  # None: not run
    detail: str

    @property
    def obligation(self) -> str:
        return OBLIGATIONS[self.name]

    @property
    def verdict(self) -> str:
        return {True: "PASS", False: "FAIL", None: "SKIP"}[self.passed]


@dataclass
class Report:
    target: Target
    outcomes: list[Outcome] = field(default_factory=list)
    fw: str | None = None
    boot_id: str | None = None

    @property
    def passed(self) -> bool:
        return len(self.outcomes) == len(CHECKS) and all(o.passed for o in self.outcomes)

    @property
    def failed(self) -> list[str]:
        return [o.name for o in self.outcomes if o.passed is not True]

    def outcome(self, name: str) -> Outcome:
        return next(o for o in self.outcomes if o.name == name)


def new_id(tag: str) -> str:
    return f"DC{tag}{uuid.uuid4().hex[:16].upper()}"


class Session:
    """One run of every check; each method appends its outcome to the report."""

    def __init__(
        self, probe: Probe, *, slot: int, timeout_ms: int, timing: Timing, report: Report
    ) -> None:
        self.probe = probe
        self.slot = slot
        self.timeout_ms = timeout_ms
        self.timing = timing
        self.report = report
        self.target = probe.target

    def record(self, name: str, passed: bool | None, detail: str) -> None:
        self.report.outcomes.append(Outcome(name, passed, detail))

    def dispense(self, command_id: str, *, expires_in_s: int = 120) -> dict[str, Any]:
        return {
            "cmd": "dispense",
            "commandId": command_id,
            "orderId": f"ORD-{command_id}",
            "slot": self.slot,
            "timeoutMs": self.timeout_ms,
            "expiresAt": int(time.time()) + expires_in_s,
        }

    @property
    def vend_s(self) -> float:
        return self.timeout_ms / 1000 + self.timing.result_grace_s

    # --- the checks -----------------------------------------------------------------------

    async def run(self) -> None:
        if not await self.check_status():
            for name, _ in CHECKS[1:]:
                self.record(name, None, "not run: the device is not ONLINE")
            return
        first = await self.check_result()
        if first is None:
            for name, _ in CHECKS[2:5]:
                self.record(name, None, "not run: no result to work with")
        else:
            await self.check_resend_sync_ack(first)
        await self.check_repeat_busy(first)
        await self.check_expired()
        await self.check_malformed(first)
        await self.check_config()

    async def check_status(self) -> bool:
        heard = await self.probe.wait_for(
            TopicKind.STATUS, 0, self.timing.online_s, status=PresenceStatus.ONLINE
        )
        if heard is None:
            self.record("status", False, f"no ONLINE status within {self.timing.online_s:.0f} s")
            return False
        retained = await read_retained(self.target, TopicKind.STATUS)
        body = retained.body if retained is not None else None
        if body is None:
            self.record("status", False, "no retained status on the status topic")
            return False
        problems = []
        if body.get("status") != PresenceStatus.ONLINE:
            problems.append(f"retained status is {body.get('status')!r}")
        for key in ("bootId", "fw"):
            if not isinstance(body.get(key), str) or not body[key]:
                problems.append(f"no {key}")
        if problems:
            self.record("status", False, "; ".join(problems) + f": {retained_text(retained)}")
            return False
        self.report.fw, self.report.boot_id = body["fw"], body["bootId"]
        self.record("status", True, f"fw={body['fw']} bootId={body['bootId']}")
        return True

    async def check_result(self) -> Heard | None:
        command = self.dispense(new_id("A"))
        mark = self.probe.mark()
        await self.probe.command(command)
        heard = await self.probe.wait_for(
            TopicKind.DISPENSE_RESULT, mark, self.vend_s, commandId=command["commandId"]
        )
        if heard is None:
            self.record("result", False, f"no result with the commandId within {self.vend_s:.0f} s")
            return None
        problems = result_problems(heard.body, command)
        error = heard.body.get("error") if heard.body else None
        if error in REFUSALS:
            hint = " (try --slot)" if error == ResultError.SLOT_DISABLED else ""
            problems.append(f"a fresh command was refused with {error}{hint}")
        if problems:
            self.record("result", False, "; ".join(problems))
            return None
        self.record("result", True, describe(heard.body))
        return heard

    async def check_resend_sync_ack(self, first: Heard) -> None:
        command_id = first.command_id
        copies = [first]
        for within in (self.timing.first_resend_s, 2 * self.timing.first_resend_s + 1):
            heard = await self.probe.wait_for(
                TopicKind.DISPENSE_RESULT,
                self.probe.heard.index(copies[-1]) + 1,
                within,
                commandId=command_id,
            )
            if heard is None:
                break
            copies.append(heard)
        gaps = [b.at - a.at for a, b in itertools.pairwise(copies)]
        shown = ", ".join(f"{g:.1f}" for g in gaps) or "none"
        differing = [c for c in copies if c.body != first.body]
        if differing:
            self.record("resend", False, f"a re-sent copy differs: {differing[0].raw!r}")
        elif len(copies) < 3:
            count = len(copies) - 1
            self.record("resend", False, f"{count} re-send(s) without ack (gaps {shown} s)")
        elif gaps[0] < 0.5 or gaps[1] < 1.4 * gaps[0] or gaps[1] > 31:
            self.record("resend", False, f"gaps {shown} s do not grow (1 s, 2 s, 4 s … ≤ 30 s)")
        else:
            self.record("resend", True, f"gaps {shown} s")

        # sync, where no backoff re-send is due soon: right after a copy, before the next gap.
        last_gap = gaps[-1] if gaps else 0.0
        window = max(0.5, min(2.0, 0.75 * last_gap)) if gaps else 2.0
        mark = self.probe.mark()
        await self.probe.command({"cmd": "sync"})
        synced = await self.probe.wait_for(
            TopicKind.DISPENSE_RESULT, mark, window, commandId=command_id
        )
        if synced is None:
            self.record("sync", False, f"no re-send within {window:.1f} s of sync")
        elif synced.body != first.body:
            self.record("sync", False, f"re-sent result differs: {synced.raw!r}")
        else:
            self.record("sync", True, f"re-sent {synced.at - copies[-1].at:.2f} s after sync")

        await self.probe.command({"cmd": "ack", "commandId": command_id})
        acked_at = time.monotonic()
        quiet = max(self.timing.min_quiet_s, 2.5 * last_gap)
        await asyncio.sleep(quiet)
        # A copy already on its way when the ack went out is not a failure.
        late = [h for h in self.probe.results(command_id, mark) if h.at > acked_at + 0.5]
        if late:
            self.record("ack", False, f"{len(late)} re-send(s) in the {quiet:.0f} s after ack")
        else:
            self.record("ack", True, f"quiet for {quiet:.0f} s after ack")

    async def check_repeat_busy(self, first: Heard | None) -> None:
        """Repeat A, then start C; during C's vend send D (expect BUSY) and repeat C."""
        vend = self.dispense(new_id("C"))
        other = self.dispense(new_id("D"))
        mark = self.probe.mark()
        repeated_at = time.monotonic()
        if first is not None and first.body is not None:
            await self.probe.command(self.dispense_repeat(first.body))
        await asyncio.sleep(0.2)
        await self.probe.command(vend)
        await asyncio.sleep(self.timing.busy_delay_s)
        await self.probe.command(other)
        await asyncio.sleep(0.1)
        await self.probe.command(vend)
        vend_id, other_id = vend["commandId"], other["commandId"]
        refused = await self.probe.wait_for(
            TopicKind.DISPENSE_RESULT, mark, self.timing.answer_s + 2, commandId=other_id
        )
        done = await self.probe.wait_for(
            TopicKind.DISPENSE_RESULT, mark, self.vend_s, commandId=vend_id
        )
        # Let any second result for the vend arrive before judging, then stop the re-sends.
        await asyncio.sleep(self.timing.ignore_window_s)
        for command_id in (vend_id, other_id):
            await self.probe.command({"cmd": "ack", "commandId": command_id})
        vend_results = self.probe.results(vend_id, mark)

        if first is None or first.body is None:
            self.record("repeat", None, "not run: no first result")
        else:
            repeats = self.probe.results(first.command_id, mark)
            problems = []
            if not repeats:
                problems.append("no result re-published for the repeated command")
            elif repeats[0].body != first.body:
                problems.append(f"different result: {repeats[0].raw!r}")
            elif repeats[0].at - repeated_at > self.timing.answer_s:
                problems.append("answered too late")
            if any(h.body and h.body.get("error") == "BUSY" for h in vend_results):
                problems.append("the next command got BUSY: the repeat started a second vend")
            self.record(
                "repeat", not problems, "; ".join(problems) or "identical result, no second vend"
            )

        if refused is None:
            self.record("busy", False, "no result for the competing command")
        elif not refused.body or refused.body.get("error") != "BUSY":
            self.record("busy", False, f"competing command answered with {describe(refused.body)}")
        elif refused.body.get("success") is not False:
            self.record("busy", False, "BUSY result with success not false")
        elif done is not None and refused.at > done.at:
            self.record("busy", False, "BUSY arrived after the vend ended")
        else:
            self.record("busy", True, "BUSY while the motor ran")

        if done is None:
            self.record("repeat-in-flight", False, "no result for the command being vended")
        else:
            distinct = {json.dumps(h.body, sort_keys=True) for h in vend_results}
            problems = result_problems(done.body, vend)
            if done.body and done.body.get("error") == "BUSY":
                problems.append("the repeat of the command being vended was answered BUSY")
            if len(distinct) > 1:
                problems.append(f"{len(distinct)} different results for one command")
            self.record(
                "repeat-in-flight",
                not problems,
                "; ".join(problems) or f"one result: {describe(done.body)}",
            )

    def dispense_repeat(self, result: dict[str, Any]) -> dict[str, Any]:
        command = self.dispense(str(result.get("commandId")))
        command["orderId"] = result.get("orderId")
        return command

    async def check_expired(self) -> None:
        command = self.dispense(new_id("E"), expires_in_s=-3600)
        mark = self.probe.mark()
        await self.probe.command(command)
        heard = await self.probe.wait_for(
            TopicKind.DISPENSE_RESULT, mark, self.timing.answer_s + self.vend_s, **_id(command)
        )
        if heard is None:
            self.record("expired", False, "no result")
        elif not heard.body or heard.body.get("error") != ResultError.EXPIRED:
            hint = " (is the clock set by NTP?)" if heard.body and heard.body.get("success") else ""
            self.record("expired", False, f"answered {describe(heard.body)}{hint}")
        elif heard.body.get("success") is not False:
            self.record("expired", False, "EXPIRED with success not false")
        else:
            self.record("expired", True, "refused with EXPIRED")
        await self.probe.command({"cmd": "ack", "commandId": command["commandId"]})

    async def check_malformed(self, first: Heard | None) -> None:
        mark = self.probe.mark()
        junk = malformed_commands(self.dispense)
        for payload in junk:
            await self.probe.command(payload)
            await asyncio.sleep(0.02)
        await asyncio.sleep(self.timing.ignore_window_s)
        answered = self.probe.since(TopicKind.DISPENSE_RESULT, mark)
        statuses = self.probe.since(TopicKind.STATUS, mark)
        problems = []
        if answered:
            problems.append(f"answered junk with a result: {answered[0].raw[:80]!r}")
        reboots = [s for s in statuses if not s.body or s.body.get("bootId") != self.report.boot_id]
        if reboots:
            problems.append(f"went offline or rebooted: {reboots[0].raw[:60]!r}")
        # Still responsive: a remembered command is answered at once (or a new one is vended).
        probe_cmd = (
            self.dispense_repeat(first.body)
            if first is not None and first.body is not None
            else self.dispense(new_id("F"))
        )
        mark = self.probe.mark()
        await self.probe.command(probe_cmd)
        alive = await self.probe.wait_for(
            TopicKind.DISPENSE_RESULT, mark, self.timing.answer_s + self.vend_s, **_id(probe_cmd)
        )
        if alive is None:
            problems.append("no answer to a valid command afterwards")
        await self.probe.command({"cmd": "ack", "commandId": probe_cmd["commandId"]})
        self.record(
            "malformed",
            not problems,
            "; ".join(problems) or f"{len(junk)} payloads ignored, still answering",
        )

    async def check_config(self) -> None:
        retained = [h for h in self.probe.heard if h.kind is TopicKind.CONFIG and h.retain]
        base = retained[-1].body if retained and retained[-1].body else None
        status = await read_retained(self.target, TopicKind.STATUS)
        versions = [0]
        if base is not None and isinstance(base.get("version"), int):
            versions.append(base["version"])
        if status is not None and status.body and isinstance(status.body.get("configVersion"), int):
            versions.append(status.body["configVersion"])
        version = max(versions) + 1
        config: dict[str, Any] = {"slots": [], "telemetryIntervalS": 60}
        if base is not None:
            config.update(base)
        config.update(version=version, machineId=self.target.machine_id)
        mark = self.probe.mark()
        await self.probe.client.publish(
            self.target.topic(TopicKind.CONFIG),
            json.dumps(config, separators=(",", ":")).encode(),
            qos=1,
            retain=True,
        )
        heard = await self.probe.wait_for(
            TopicKind.STATUS, mark, self.timing.config_s, configVersion=version
        )
        if heard is None:
            self.record("config", False, f"no status with configVersion {version}")
            return
        after = await read_retained(self.target, TopicKind.STATUS)
        body = after.body if after is not None else None
        if body is None or body.get("configVersion") != version:
            self.record("config", False, f"retained status lacks configVersion {version}")
        elif (
            body.get("status") != PresenceStatus.ONLINE or body.get("bootId") != self.report.boot_id
        ):
            self.record("config", False, f"retained status changed: {retained_text(after)}")
        else:
            self.record("config", True, f"configVersion {version} in the retained status")


def _id(command: dict[str, Any]) -> dict[str, Any]:
    return {"commandId": command["commandId"]}


def result_problems(body: dict[str, Any] | None, command: dict[str, Any]) -> list[str]:
    if body is None:
        return ["result is not a JSON object"]
    problems = [f"missing {key}" for key in RESULT_FIELDS if key not in body]
    for key in ("commandId", "orderId", "slot"):
        if key in body and body[key] != command[key]:
            problems.append(f"{key} {body[key]!r} != {command[key]!r}")
    for key in ("success", "dropDetected"):
        if key in body and not isinstance(body[key], bool):
            problems.append(f"{key} is not a boolean")
    duration = body.get("durationMs")
    if duration is not None and (not isinstance(duration, int) or isinstance(duration, bool)):
        problems.append("durationMs is not an integer")
    error = body.get("error")
    if error is not None and not isinstance(error, str):
        problems.append("error is not a string")
    if body.get("success") and body.get("dropDetected") and error:
        problems.append("a dropped unit reports an error")
    return problems


def describe(body: dict[str, Any] | None) -> str:
    if body is None:
        return "a non-JSON result"
    keys = ("success", "dropDetected", "durationMs", "error")
    return " ".join(f"{k}={json.dumps(body.get(k))}" for k in keys)


def retained_text(heard: Heard | None) -> str:
    return "nothing" if heard is None else heard.raw[:120].decode("utf-8", "replace")


def malformed_commands(dispense: Any) -> list[bytes]:
    """Payloads a device must ignore: not JSON, wrong types, missing fields, unknown cmd."""

    def variant(tag: str, **changes: Any) -> bytes:
        body = dispense(new_id(tag))
        for key, value in changes.items():
            if value is _DROP:
                body.pop(key)
            else:
                body[key] = value
        return json.dumps(body).encode()

    return [
        b"not json",
        b"",
        b"\xff\xfe\x00\x01",
        b"[1,2,3]",
        b'"dispense"',
        b"{}",
        b'{"cmd":"dispense"}',
        b'{"cmd":"ack"}',
        b'{"cmd":null}',
        variant("M1", slot="1"),
        variant("M2", slot=True),
        variant("M3", commandId=12345),
        variant("M4", expiresAt=_DROP),
        variant("M5", timeoutMs="2150"),
        variant("M6", orderId=None),
        variant("M7", cmd="vend"),
        variant("M8", cmd="reboot"),
        variant("M9", cmd="DISPENSE"),
        b'{"cmd":"dispense","commandId":"' + b"X" * 40 + b'",',
    ]


_DROP = object()


async def run_checks(
    target: Target,
    *,
    slot: int = 1,
    timeout_ms: int = 2150,
    timing: Timing | None = None,
) -> Report:
    """Every check against the device at `target`; raises aiomqtt.MqttError if no broker."""
    report = Report(target)
    async with target.client("backend") as client:
        probe = Probe(target, client)
        pump = asyncio.create_task(probe.pump())
        try:
            await probe.subscribe()
            session = Session(
                probe, slot=slot, timeout_ms=timeout_ms, timing=timing or Timing(), report=report
            )
            await session.run()
        finally:
            pump.cancel()
            with suppress(asyncio.CancelledError):
                await pump
    return report
