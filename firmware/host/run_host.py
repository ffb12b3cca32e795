"""Runs the reference firmware on this host under CPython until SIGTERM.

Stand-ins (this folder) replace `machine`, `network`, `ntptime` and `umqtt.simple`; the MQTT
stand-in speaks real MQTT 3.1.1 to the broker given; motors and the drop sensor are simulated.
"""

import argparse
import os
import re
import signal
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

HERE = Path(__file__).resolve().parent
FIRMWARE = HERE.parent
sys.path[:0] = [str(HERE), str(FIRMWARE)]

_T0 = time.monotonic()
_TICKS_PERIOD = 1 << 30


def _ticks_ms():
    # Wraps like the ESP32's ticks_ms, so the firmware's wrap handling runs here too.
    return int((time.monotonic() - _T0) * 1000) % _TICKS_PERIOD


def _ticks_diff(a, b):
    return ((a - b + _TICKS_PERIOD // 2) % _TICKS_PERIOD) - _TICKS_PERIOD // 2


time.ticks_ms = _ticks_ms  # type: ignore[attr-defined]
time.ticks_diff = _ticks_diff  # type: ignore[attr-defined]
time.sleep_ms = lambda ms: time.sleep(ms / 1000)  # type: ignore[attr-defined]


def _parser():
    p = argparse.ArgumentParser(prog="run-host.sh", description=__doc__)
    p.add_argument("--broker", required=True, help="mqtt://host:1883 or mqtts://host:8883")
    p.add_argument("--prefix", required=True)
    p.add_argument("--machine", required=True)
    p.add_argument("--username", help="default: the machine id")
    p.add_argument("--password")
    p.add_argument("--ca-file", help="CA bundle for mqtts://")
    p.add_argument("--state-dir", default=str(FIRMWARE / ".host-state"))
    p.add_argument("--drop-ms", type=int, default=300, help="motor start to item in the beam")
    p.add_argument("--telemetry-interval", type=int, default=60)
    return p


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    url = urlsplit(args.broker)
    if url.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not url.hostname:
        parser.error("--broker must look like mqtt://host:1883 or mqtts://host:8883")
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,50}", args.machine):
        parser.error("--machine must match [A-Za-z0-9_-]{1,50}")
    tls = url.scheme in ("mqtts", "ssl")

    import config

    config.MACHINE_ID = args.machine
    config.MQTT_HOST = url.hostname
    config.MQTT_PORT = url.port or (8883 if tls else 1883)
    config.MQTT_TLS = tls
    config.MQTT_CA_FILE = args.ca_file
    config.MQTT_USERNAME = args.username or (unquote(url.username) if url.username else None)
    config.MQTT_PASSWORD = args.password or (unquote(url.password) if url.password else "")
    config.MQTT_PREFIX = args.prefix
    config.TELEMETRY_INTERVAL_S = args.telemetry_interval
    state_dir = Path(args.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    config.STATE_FILE = str(state_dir / (args.machine + ".json"))

    import machine

    machine.WORLD.drop_ms = args.drop_ms
    machine.WORLD.drop_pin = config.DROP_SENSOR_PIN
    machine.WORLD.motor_pins = set(config.SLOT_MOTOR_PINS.values())

    import app

    firmware = app.App()

    def stop(signum, frame):
        firmware.running = False

    def turn_key(signum, frame):
        machine.WORLD.turn_key(config.MAINTENANCE_SWITCH_PIN)

    signal.signal(signal.SIGUSR1, turn_key)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    app.log("host firmware", firmware.device.fw, "machine", args.machine, "pid", os.getpid())
    firmware.run_forever()
    app.log("stopped")


if __name__ == "__main__":
    main()
