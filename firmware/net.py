"""Network glue: WiFi with reconnect, NTP time, the MQTT client and its TLS context."""

import config
import network

WIFI_RETRY_MS = 15000


class Wifi:
    def __init__(self):
        self.wlan = network.WLAN(network.STA_IF)
        self.wlan.active(True)
        self._attempt_ms = None

    def ensure(self, now_ms):
        """True when connected; otherwise (re)start a connection attempt every 15 s."""
        if self.wlan.isconnected():
            self._attempt_ms = None
            return True
        if self._attempt_ms is None or now_ms - self._attempt_ms >= WIFI_RETRY_MS:
            self._attempt_ms = now_ms
            try:
                self.wlan.connect(config.WIFI_SSID, config.WIFI_PASSWORD)
            except OSError:
                pass  # e.g. "already connecting"; retried on the next attempt
        return False

    def rssi(self):
        try:
            return self.wlan.status("rssi")
        except Exception:
            return None


def sync_time():
    """Set the RTC from NTP; raises OSError when the server does not answer."""
    import ntptime

    ntptime.host = config.NTP_HOST
    ntptime.settime()


def tls_context():
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if config.MQTT_CA_FILE:
        ctx.load_verify_locations(cafile=config.MQTT_CA_FILE)
    elif hasattr(ctx, "load_default_certs"):
        ctx.load_default_certs()
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def mqtt_client(machine_id):
    from umqtt.simple import MQTTClient

    user = config.MQTT_USERNAME or machine_id
    return MQTTClient(
        "vm-" + machine_id,
        config.MQTT_HOST,
        port=config.MQTT_PORT,
        user=user,
        password=config.MQTT_PASSWORD or None,
        keepalive=config.MQTT_KEEPALIVE_S,
        ssl=tls_context() if config.MQTT_TLS else None,
    )
