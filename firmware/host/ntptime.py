"""Host stand-in for MicroPython's `ntptime`: the host's clock is already kept by NTP."""

host = "pool.ntp.org"


def settime():
    pass
