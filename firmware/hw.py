"""Hardware glue: clock, flash file, motors, drop sensor, switches, thermistor, watchdog."""

import binascii
import gc
import math
import os
import time

import config
import machine
import vendproto

# MicroPython ports before 1.22 count from 2000; everything on the wire is Unix time.
EPOCH_OFFSET = 0 if time.gmtime(0)[0] == 1970 else 946684800
CLOCK_VALID_AFTER = 1700000000  # a clock before Nov 2023 has not been set by NTP


def wall_s():
    """Unix seconds, or None while the clock has not been set."""
    now = time.time() + EPOCH_OFFSET
    return now if now > CLOCK_VALID_AFTER else None


def new_boot_id():
    return binascii.hexlify(os.urandom(4)).decode()


def free_mem():
    mem_free = getattr(gc, "mem_free", None)
    return mem_free() if mem_free is not None else None


class _NoPin:
    def value(self, v=None):
        return 0


def output(pin):
    """An output pin, or a stand-in that ignores writes when the pin is not fitted (None)."""
    if pin is None:
        return _NoPin()
    return machine.Pin(pin, machine.Pin.OUT, value=0)


class Clock:
    """Milliseconds since boot that never wrap (ticks_ms wraps after about 12 days)."""

    def __init__(self):
        self._last = time.ticks_ms()
        self._total = 0

    def now_ms(self):
        ticks = time.ticks_ms()
        self._total += time.ticks_diff(ticks, self._last)
        self._last = ticks
        return self._total


class FileStore:
    """The results memory in one flash file; written via a temp file and a rename."""

    def __init__(self, path):
        self.path = path
        self.writes = 0

    def load(self):
        for name in (self.path, self.path + ".tmp"):
            try:
                with open(name) as f:
                    return f.read()
            except OSError:
                pass
        return None

    def save(self, text):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        try:
            os.rename(tmp, self.path)
        except OSError:
            # FAT cannot rename over a file; load() falls back to the temp file meanwhile.
            os.remove(self.path)
            os.rename(tmp, self.path)
        self.writes += 1


class Dispenser:
    """Drives one spiral motor at a time and watches the drop sensor on an interrupt."""

    def __init__(self):
        self.motors = {}
        for slot, pin in config.SLOT_MOTOR_PINS.items():
            self.motors[slot] = machine.Pin(pin, machine.Pin.OUT, value=0)
        pull = machine.Pin.PULL_UP if config.DROP_SENSOR_PULL_UP else None
        self.drop_pin = machine.Pin(config.DROP_SENSOR_PIN, machine.Pin.IN, pull)
        self.drop_seen = False
        self.drop_pin.irq(trigger=machine.Pin.IRQ_FALLING, handler=self._on_drop)
        self.stall_pin = None
        if config.STALL_SENSE_PIN is not None:
            self.stall_pin = machine.Pin(config.STALL_SENSE_PIN, machine.Pin.IN)
        self.home_pin = None
        if config.HOME_SWITCH_PIN is not None:
            self.home_pin = machine.Pin(config.HOME_SWITCH_PIN, machine.Pin.IN, machine.Pin.PULL_UP)
        self.run = None
        self._left_home = False

    def _on_drop(self, pin):
        # Interrupt context: set a flag only; the main loop reads it.
        self.drop_seen = True

    def stop_all(self):
        for pin in self.motors.values():
            pin.value(0)

    def start(self, command, motor_ms, now_ms):
        self.stop_all()
        self.drop_seen = False
        self._left_home = False
        self.run = vendproto.DispenseRun(command, motor_ms, now_ms)
        self.motors[command["slot"]].value(1)

    def poll(self, now_ms):
        """-> None, or (commandId, (success, dropDetected, durationMs, error)) when done."""
        run = self.run
        if run is None:
            return None
        home = None
        if self.home_pin is not None:
            at_home = self.home_pin.value() == 0
            if not at_home:
                self._left_home = True
            home = self._left_home and at_home
        stalled = self.stall_pin is not None and self.stall_pin.value() == 1
        outcome = run.step(now_ms, self.drop_seen, stalled, home)
        if not run.motor_on:
            self.motors[run.command["slot"]].value(0)
        if outcome is None:
            return None
        self.stop_all()
        self.run = None
        return run.command["commandId"], outcome


class MaintenanceSwitch:
    """The service key: closed (LOW) means MAINTENANCE; debounced."""

    def __init__(self):
        self.pin = None
        if config.MAINTENANCE_SWITCH_PIN is not None:
            self.pin = machine.Pin(config.MAINTENANCE_SWITCH_PIN, machine.Pin.IN, machine.Pin.PULL_UP)
        self.state = False
        self._candidate = False
        self._since = 0

    def poll(self, now_ms):
        """-> the new state when it changed and stayed for the debounce time, else None."""
        if self.pin is None:
            return None
        reading = self.pin.value() == 0
        if reading != self._candidate:
            self._candidate = reading
            self._since = now_ms
            return None
        if reading != self.state and now_ms - self._since >= config.MAINTENANCE_DEBOUNCE_MS:
            self.state = reading
            return reading
        return None


class Thermometer:
    """NTC thermistor in a divider on an ADC pin, Beta model."""

    def __init__(self):
        self.adc = None
        if config.TEMP_ADC_PIN is not None:
            self.adc = machine.ADC(machine.Pin(config.TEMP_ADC_PIN))
            if hasattr(self.adc, "atten"):
                self.adc.atten(machine.ADC.ATTN_11DB)

    def read_c(self):
        if self.adc is None:
            return None
        raw = self.adc.read_u16()
        if raw <= 0 or raw >= 65535:
            return None  # open or shorted sensor
        resistance = config.NTC_SERIES_R * raw / (65535 - raw)
        kelvin = 1 / (1 / 298.15 + math.log(resistance / config.NTC_R25) / config.NTC_BETA)
        return kelvin - 273.15


class Watchdog:
    def __init__(self, timeout_ms):
        self.wdt = machine.WDT(timeout=timeout_ms)

    def feed(self):
        self.wdt.feed()
