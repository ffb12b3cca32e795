"""Host stand-in for MicroPython's `network`: the host is always connected."""

STA_IF = 0
AP_IF = 1


class WLAN:
    def __init__(self, interface=STA_IF):
        self.interface = interface
        self._active = False

    def active(self, state=None):
        if state is not None:
            self._active = bool(state)
        return self._active

    def connect(self, ssid=None, key=None):
        self._active = True

    def disconnect(self):
        pass

    def isconnected(self):
        return self._active

    def status(self, param=None):
        if param == "rssi":
            return -58
        return 1010  # STAT_GOT_IP

    def ifconfig(self):
        return ("127.0.0.1", "255.0.0.0", "127.0.0.1", "127.0.0.1")
