"""Host stand-in for MicroPython's `machine`: pins, ADC and watchdog over a simulated vending
machine. A motor output turning on makes an item fall through the beam after `drop_ms`;
turned off earlier, the item stays on the spiral (the firmware then reports NO_DROP)."""

import math
import os
import sys
import threading
import time


class World:
    """The simulated mechanics: which pins are motors, where the drop sensor is."""

    def __init__(self):
        self.drop_ms = 300
        self.drop_pin = None
        self.motor_pins = set()
        self.temperature_c = 4.5
        self.vends = 0
        self._timers = {}
        self._lock = threading.Lock()

    def motor(self, pin, on):
        with self._lock:
            timer = self._timers.pop(pin.id, None)
            if timer is not None:
                timer.cancel()
            if on:
                timer = threading.Timer(self.drop_ms / 1000, self._fall, (pin.id,))
                timer.daemon = True
                self._timers[pin.id] = timer
                timer.start()

    def _fall(self, pin_id):
        with self._lock:
            if self._timers.pop(pin_id, None) is None:
                return
            self.vends += 1
        sensor = Pin._pins.get(self.drop_pin)
        if sensor is not None:
            # The item breaks the beam (LOW) for a moment.
            sensor._drive(0)
            sensor._drive(1)


    def turn_key(self, pin_id):
        """The technician turns the maintenance key switch (closed = LOW)."""
        pin = Pin._pins.get(pin_id)
        if pin is not None:
            pin._drive(0 if pin.value() else 1)


WORLD = World()


class Pin:
    IN = 1
    OUT = 3
    OPEN_DRAIN = 7
    PULL_UP = 2
    PULL_DOWN = 1
    IRQ_RISING = 1
    IRQ_FALLING = 2
    _pins = {}

    def __init__(self, id, mode=-1, pull=None, value=None):
        self.id = id
        self.mode = mode
        self._value = 1 if pull == Pin.PULL_UP else 0
        if value is not None:
            self._value = 1 if value else 0
        self._handler = None
        self._trigger = 0
        Pin._pins[id] = self

    def value(self, v=None):
        if v is None:
            return self._value
        self._value = 1 if v else 0
        if self.id in WORLD.motor_pins:
            WORLD.motor(self, self._value == 1)
        return None

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)

    def irq(self, trigger=IRQ_FALLING | IRQ_RISING, handler=None):
        self._trigger = trigger
        self._handler = handler

    def _drive(self, level):
        """An input changes level from outside, as the hardware would."""
        old, self._value = self._value, level
        falling = old == 1 and level == 0 and self._trigger & Pin.IRQ_FALLING
        rising = old == 0 and level == 1 and self._trigger & Pin.IRQ_RISING
        if self._handler is not None and (falling or rising):
            self._handler(self)


class ADC:
    ATTN_0DB = 0
    ATTN_11DB = 3

    def __init__(self, pin, atten=None):
        self.pin = pin

    def atten(self, value):
        pass

    def read_u16(self):
        # The NTC divider of config.py (10 k series, 10 k at 25 C, Beta 3950) at WORLD's temperature.
        kelvin = WORLD.temperature_c + 273.15
        resistance = 10000 * math.exp(3950 * (1 / kelvin - 1 / 298.15))
        return int(65535 * resistance / (resistance + 10000))


class WDT:
    """Ends the process like a board reset when not fed within `timeout` ms."""

    def __init__(self, id=0, timeout=5000):
        self.timeout = timeout / 1000
        self._fed = time.monotonic()
        thread = threading.Thread(target=self._watch, daemon=True)
        thread.start()

    def feed(self):
        self._fed = time.monotonic()

    def _watch(self):
        while True:
            time.sleep(min(self.timeout / 4, 1.0))
            if time.monotonic() - self._fed > self.timeout:
                print("watchdog: main loop stalled, resetting", flush=True)
                os._exit(3)


def unique_id():
    return b"\x24\x0a\xc4\x00\x00\x01"


def reset():
    os.execv(sys.executable, [sys.executable, *sys.argv])


def freq(hz=None):
    return 240000000
