"""vendhub device protocol (docs/protocol.md): pure logic shared by the board, the host and tests.

Runs unchanged under MicroPython and CPython: no typing, dataclasses, f-strings or dict
unpacking, no I/O except through the store object handed in, no clock except the times
passed to each call. Time comes in two forms: `now_ms`, a monotonic millisecond counter that
never wraps (the glue extends ticks_ms), and `wall_s`, Unix seconds or None while the clock
is not set (no NTP yet).
"""

import json

FW_VERSION = "vendhub-mpy-1.0.0"

# protocol.md, device obligation 1.
RESULT_MEMORY = 32
BACKOFF_FIRST_MS = 1000
BACKOFF_CAP_MS = 30000
MAX_PAYLOAD = 8192
# protocol.md: timeoutMs is the slot's motor time plus this margin (1500 -> 2150).
MOTOR_MARGIN_MS = 650
MIN_MOTOR_MS = 200
MAX_TIMEOUT_MS = 600000
MAX_ID_LEN = 64
# Acks only stop re-sending; losing one to a reboot costs one duplicate result, which the
# backend re-acks. So acks are written to flash with the next required write, or after this.
ACK_FLUSH_MS = 600000
FLASH_FORMAT = 1
TELEMETRY_MIN_S = 5
TELEMETRY_MAX_S = 3600

JAM = "JAM"
MOTOR_TIMEOUT = "MOTOR_TIMEOUT"
NO_DROP = "NO_DROP"
EXPIRED = "EXPIRED"
SLOT_DISABLED = "SLOT_DISABLED"
BUSY = "BUSY"
ERROR_CODES = (JAM, MOTOR_TIMEOUT, NO_DROP, EXPIRED, SLOT_DISABLED, BUSY)

ONLINE = "ONLINE"
OFFLINE = "OFFLINE"
MAINTENANCE = "MAINTENANCE"

# Topic kinds (the last topic level).
COMMAND = "command"
CONFIG = "config"
RESULT = "dispense_result"
TELEMETRY = "telemetry"
STATUS = "status"

# Actions returned to the glue: (PUBLISH, kind, payload_bytes, retain) or
# (START, command_dict, motor_ms).
PUBLISH = "publish"
START = "start"

OFFLINE_PAYLOAD = b'{"status":"OFFLINE"}'


def backoff_ms(attempt):
    """Delay after re-publish number `attempt` (0-based): 1 s, 2 s, 4 s ... at most 30 s."""
    if attempt > 15:
        attempt = 15
    delay = BACKOFF_FIRST_MS << attempt
    return delay if delay < BACKOFF_CAP_MS else BACKOFF_CAP_MS


def topic(prefix, machine_id, kind):
    return prefix + "/" + machine_id + "/" + kind


def _is_int(value):
    # type() rather than isinstance: True is an int in CPython, and must not pass as a slot.
    return type(value) is int


def _is_id(value):
    return type(value) is str and 0 < len(value) <= MAX_ID_LEN


def decode(payload):
    """Bytes -> dict, or None for anything that is not a small UTF-8 JSON object."""
    if payload is None or len(payload) > MAX_PAYLOAD:
        return None
    try:
        data = json.loads(bytes(payload).decode("utf-8"))
    except Exception:  # ValueError in CPython, UnicodeError/ValueError in MicroPython
        return None
    return data if type(data) is dict else None


def parse_command(payload):
    """-> (command dict, None) or (None, reason). Unknown `cmd` values are ignored."""
    data = decode(payload)
    if data is None:
        return None, "not a JSON object"
    cmd = data.get("cmd")
    if cmd == "sync":
        return {"cmd": "sync"}, None
    if cmd == "ack":
        if not _is_id(data.get("commandId")):
            return None, "ack without a valid commandId"
        return {"cmd": "ack", "commandId": data["commandId"]}, None
    if cmd != "dispense":
        return None, "unknown cmd"
    command_id = data.get("commandId")
    order_id = data.get("orderId")
    slot = data.get("slot")
    timeout_ms = data.get("timeoutMs")
    expires_at = data.get("expiresAt")
    if not _is_id(command_id) or not _is_id(order_id):
        return None, "dispense without a valid commandId/orderId"
    if not _is_int(slot) or not 1 <= slot <= 1000:
        return None, "dispense with an invalid slot"
    if not _is_int(timeout_ms) or not 0 < timeout_ms <= MAX_TIMEOUT_MS:
        return None, "dispense with an invalid timeoutMs"
    if not _is_int(expires_at):
        return None, "dispense with an invalid expiresAt"
    command = {
        "cmd": "dispense",
        "commandId": command_id,
        "orderId": order_id,
        "slot": slot,
        "timeoutMs": timeout_ms,
        "expiresAt": expires_at,
    }
    return command, None


def parse_config(payload, machine_id):
    """-> (config dict, None) or (None, reason); slots become {slot: (motorMs, enabled)}."""
    data = decode(payload)
    if data is None:
        return None, "not a JSON object"
    version = data.get("version")
    if not _is_int(version) or version < 0:
        return None, "config without an integer version"
    if "machineId" in data and data["machineId"] != machine_id:
        return None, "config for another machine"
    interval = data.get("telemetryIntervalS")
    if interval is not None and (not _is_int(interval) or interval <= 0):
        return None, "invalid telemetryIntervalS"
    slots = {}
    raw_slots = data.get("slots", [])
    if type(raw_slots) is not list:
        return None, "slots is not a list"
    for item in raw_slots:
        if type(item) is not dict:
            return None, "slot entry is not an object"
        slot = item.get("slot")
        motor_ms = item.get("motorMs")
        enabled = item.get("enabled", True)
        if not _is_int(slot) or not _is_int(motor_ms) or type(enabled) is not bool:
            return None, "invalid slot entry"
        if motor_ms <= 0 or motor_ms > MAX_TIMEOUT_MS:
            return None, "invalid motorMs"
        slots[slot] = (motor_ms, enabled)
    return {"version": version, "telemetryIntervalS": interval, "slots": slots}, None


def make_result(command, success, drop_detected, duration_ms, error):
    return {
        "commandId": command["commandId"],
        "orderId": command["orderId"],
        "slot": command["slot"],
        "success": success,
        "dropDetected": drop_detected,
        "durationMs": duration_ms,
        "error": error,
    }


def encode(obj):
    return json.dumps(obj).encode()


class MemoryStore:
    """Flash stand-in for tests: keeps the last saved text and counts writes."""

    def __init__(self, text=None):
        self.text = text
        self.writes = 0

    def load(self):
        return self.text

    def save(self, text):
        self.text = text
        self.writes += 1


class Device:
    """Everything the firmware decides; the glue moves bytes, drives pins and keeps time."""

    def __init__(self, machine_id, boot_id, store, now_ms, fw=FW_VERSION, slots=None):
        self.machine_id = machine_id
        self.boot_id = boot_id
        self.store = store
        self.fw = fw
        # Physical slots with a motor; a command for any other slot is SLOT_DISABLED.
        self.physical_slots = slots
        self.order = []  # remembered commandIds, oldest first
        self.results = {}  # commandId -> result dict
        self.acked = set()
        self.retry = {}  # commandId -> [due_ms, attempt]
        self.in_progress = None
        self.config = None
        self.maintenance = False
        self.dirty_since = None
        self.recovered = None
        self.counters = {"dispenses": 0, "duplicates": 0, "ignored": 0, "refused": 0}
        self._load(now_ms)

    # --- flash ------------------------------------------------------------------------

    def _load(self, now_ms):
        text = self.store.load()
        if not text:
            return
        try:
            data = json.loads(text)
        except ValueError:
            return  # a half-written file cannot happen with tmp+rename; start empty if edited
        if type(data) is not dict:
            return
        for item in data.get("results", []):
            cid = item.get("commandId")
            if not _is_id(cid):
                continue
            acked = item.pop("acked", False)
            self.order.append(cid)
            self.results[cid] = item
            if acked:
                self.acked.add(cid)
            else:
                self.retry[cid] = [now_ms, 0]
        config = data.get("config")
        if type(config) is dict:
            slots = {}
            for key, value in config.get("slots", {}).items():
                slots[int(key)] = (value[0], value[1])
            config["slots"] = slots
            self.config = config
        interrupted = data.get("inProgress")
        if type(interrupted) is dict:
            # Power was lost while the motor ran. The drop sensor never confirmed a unit, so by
            # the seed's rule (success && dropDetected) it is failed and the customer refunded.
            self.in_progress = None
            self.recovered = self._record(interrupted, False, False, None, MOTOR_TIMEOUT, now_ms)

    def _save(self):
        results = []
        for cid in self.order:
            item = dict(self.results[cid])
            item["acked"] = cid in self.acked
            results.append(item)
        config = None
        if self.config is not None:
            slots = {}
            for key, value in self.config["slots"].items():
                slots[str(key)] = [value[0], value[1]]
            config = {
                "version": self.config["version"],
                "telemetryIntervalS": self.config["telemetryIntervalS"],
                "slots": slots,
            }
        state = {
            "format": FLASH_FORMAT,
            "results": results,
            "inProgress": self.in_progress,
            "config": config,
        }
        self.store.save(json.dumps(state))
        self.dirty_since = None

    # --- status -----------------------------------------------------------------------

    def status_payload(self):
        body = {
            "status": MAINTENANCE if self.maintenance else ONLINE,
            "fw": self.fw,
            "bootId": self.boot_id,
        }
        if self.config is not None:
            body["configVersion"] = self.config["version"]
        return encode(body)

    def status_action(self):
        return (PUBLISH, STATUS, self.status_payload(), True)

    def on_connect(self, now_ms):
        """After (re)connecting: announce status, then re-send every unacked result now."""
        actions = [self.status_action()]
        for cid in self.order:
            retry = self.retry.get(cid)
            if retry is not None:
                retry[0] = now_ms
        return actions

    def set_maintenance(self, on):
        """The maintenance switch changed: re-publish the retained status."""
        on = bool(on)
        if on == self.maintenance:
            return []
        self.maintenance = on
        return [self.status_action()]

    # --- commands ---------------------------------------------------------------------

    def on_command(self, payload, now_ms, wall_s):
        command, reason = parse_command(payload)
        if command is None:
            self.counters["ignored"] += 1
            return []
        if command["cmd"] == "sync":
            return [self.status_action()] + [self._publish(cid) for cid in self.unacked()]
        if command["cmd"] == "ack":
            self.ack(command["commandId"], now_ms)
            return []
        return self._dispense(command, now_ms, wall_s)

    def _dispense(self, command, now_ms, wall_s):
        cid = command["commandId"]
        if cid in self.results:
            self.counters["duplicates"] += 1
            return [self._publish(cid)]
        if self.in_progress is not None and self.in_progress["commandId"] == cid:
            # A repeat of the command being vended: its one result comes when the motor stops.
            self.counters["duplicates"] += 1
            return []
        error = self._refusal(command, wall_s)
        if error is not None:
            self.counters["refused"] += 1
            self._record(command, False, False, 0, error, now_ms)
            return [self._publish(cid)]
        # Written before the motor starts, so a reboot mid-dispense is detected at boot.
        self.in_progress = command
        self._save()
        self.counters["dispenses"] += 1
        return [(START, command, self.motor_ms(command))]

    def _refusal(self, command, wall_s):
        # A device with no clock yet treats the command as unexpired (protocol.md).
        if wall_s is not None and wall_s > command["expiresAt"]:
            return EXPIRED
        if self.in_progress is not None or self.maintenance:
            return BUSY
        if not self.slot_enabled(command["slot"]):
            return SLOT_DISABLED
        return None

    def finish_dispense(self, command_id, success, drop_detected, duration_ms, error, now_ms):
        """The motor stopped: remember the outcome in flash first, then publish it."""
        command = self.in_progress
        if command is None or command["commandId"] != command_id:
            return []
        self.in_progress = None
        self._record(command, success, drop_detected, duration_ms, error, now_ms)
        return [self._publish(command_id)]

    def _record(self, command, success, drop_detected, duration_ms, error, now_ms):
        cid = command["commandId"]
        result = make_result(command, success, drop_detected, duration_ms, error)
        self.results[cid] = result
        self.order.append(cid)
        while len(self.order) > RESULT_MEMORY:
            old = self.order.pop(0)
            self.results.pop(old, None)
            self.retry.pop(old, None)
            self.acked.discard(old)
        self.retry[cid] = [now_ms + backoff_ms(0), 1]
        self._save()
        return result

    def ack(self, command_id, now_ms):
        if command_id not in self.results or command_id in self.acked:
            return False
        self.acked.add(command_id)
        self.retry.pop(command_id, None)
        if self.dirty_since is None:
            self.dirty_since = now_ms
        return True

    def _publish(self, command_id):
        return (PUBLISH, RESULT, encode(self.results[command_id]), False)

    # --- re-sending -------------------------------------------------------------------

    def unacked(self):
        return [cid for cid in self.order if cid in self.retry]

    def poll(self, now_ms):
        """Results whose backoff elapsed (each rescheduled), and the lazy flush of acks."""
        actions = []
        for cid in self.order:
            retry = self.retry.get(cid)
            if retry is not None and retry[0] <= now_ms:
                actions.append(self._publish(cid))
                retry[0] = now_ms + backoff_ms(retry[1])
                retry[1] += 1
        if self.dirty_since is not None and now_ms - self.dirty_since >= ACK_FLUSH_MS:
            self._save()
        return actions

    def flush(self):
        """Write pending ack state now (before a planned restart or power-down)."""
        if self.dirty_since is not None:
            self._save()

    # --- config -----------------------------------------------------------------------

    def on_config(self, payload):
        """Apply a retained config only if newer; then re-announce status with its version."""
        config, reason = parse_config(payload, self.machine_id)
        if config is None:
            self.counters["ignored"] += 1
            return []
        if self.config is not None and config["version"] <= self.config["version"]:
            return []
        if config["telemetryIntervalS"] is None and self.config is not None:
            config["telemetryIntervalS"] = self.config["telemetryIntervalS"]
        self.config = config
        self._save()
        return [self.status_action()]

    def motor_ms(self, command):
        """The slot's configured motor time, else timeoutMs minus the margin; within limits."""
        planned = command["timeoutMs"] - MOTOR_MARGIN_MS
        slot = self._slot_config(command["slot"])
        if slot is not None:
            planned = slot[0]
        ceiling = command["timeoutMs"] if command["timeoutMs"] > MIN_MOTOR_MS else MIN_MOTOR_MS
        if planned < MIN_MOTOR_MS:
            planned = MIN_MOTOR_MS
        return planned if planned < ceiling else ceiling

    def _slot_config(self, slot):
        if self.config is None:
            return None
        return self.config["slots"].get(slot)

    def slot_enabled(self, slot):
        if self.physical_slots is not None and slot not in self.physical_slots:
            return False
        config = self._slot_config(slot)
        return config is None or config[1]

    def telemetry_interval_s(self, default):
        interval = default
        if self.config is not None and self.config["telemetryIntervalS"] is not None:
            interval = self.config["telemetryIntervalS"]
        if interval < TELEMETRY_MIN_S:
            return TELEMETRY_MIN_S
        return interval if interval < TELEMETRY_MAX_S else TELEMETRY_MAX_S

    @property
    def busy(self):
        return self.in_progress is not None


class DispenseRun:
    """One motor run: motor on for motor_ms (or until the home switch closes), then watch
    the drop sensor until timeoutMs after the start.

    Inputs each step: `drop_seen` (latched by the beam-break interrupt), `stalled` (a stall
    or over-current input; False when none is fitted) and `home` (None when no home switch
    is fitted, else True once the spiral's cam switch has closed after leaving home).
    """

    def __init__(self, command, motor_ms, start_ms):
        self.command = command
        self.motor_ms = motor_ms
        self.timeout_ms = command["timeoutMs"]
        self.start_ms = start_ms
        self.motor_on = True
        self.motor_stopped_ms = None

    def step(self, now_ms, drop_seen, stalled=False, home=None):
        """-> None while running, else (success, dropDetected, durationMs, error)."""
        elapsed = now_ms - self.start_ms
        if self.motor_on:
            if stalled:
                self.motor_on = False
                return (False, bool(drop_seen), elapsed, JAM)
            if home is None:
                done = elapsed >= self.motor_ms
            else:
                done = bool(home)
                if not done and elapsed >= self.timeout_ms:
                    self.motor_on = False
                    return (False, bool(drop_seen), elapsed, MOTOR_TIMEOUT)
            if not done:
                return None
            self.motor_on = False
            self.motor_stopped_ms = elapsed
        if drop_seen:
            return (True, True, self.motor_stopped_ms, None)
        if elapsed >= self.timeout_ms:
            return (True, False, self.motor_stopped_ms, NO_DROP)
        return None


def telemetry_payload(wall_s, temperature, rssi, uptime_s, free_mem, maintenance):
    body = {"uptimeS": uptime_s, "freeMem": free_mem, "door": "open" if maintenance else "closed"}
    if wall_s is not None:
        body["ts"] = int(wall_s)
    if temperature is not None:
        body["temperature"] = round(temperature, 1)
    if rssi is not None:
        body["rssi"] = rssi
    return encode(body)
