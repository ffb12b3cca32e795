"""The firmware's main loop: glues vendproto.Device to WiFi, MQTT, motors and sensors."""

import os
import time

import config
import hw
import net
import vendproto

RECONNECT_CAP_MS = 30000
# Unexpected errors in a row before the board resets itself (the watchdog would anyway).
MAX_ERRORS = 20


def log(*parts):
    print("[%d]" % time.ticks_ms(), *parts)


class App:
    def __init__(self):
        self.clock = hw.Clock()
        now = self.clock.now_ms()
        self.watchdog = hw.Watchdog(config.WATCHDOG_MS)
        self.store = hw.FileStore(config.STATE_FILE)
        self.machine_id = config.MACHINE_ID
        self.device = vendproto.Device(
            self.machine_id,
            hw.new_boot_id(),
            self.store,
            now,
            slots=set(config.SLOT_MOTOR_PINS),
        )
        if self.device.recovered is not None:
            log("dispense interrupted by reboot:", self.device.recovered["commandId"])
        self.dispenser = hw.Dispenser()
        self.maintenance = hw.MaintenanceSwitch()
        self.thermometer = hw.Thermometer()
        self.led = hw.output(config.STATUS_LED_PIN)  # lit while connected to the broker
        self.wifi = net.Wifi()
        self.client = None
        self.inbox = []
        self.failures = 0
        self.reconnect_at = 0
        self.next_ping = 0
        self.next_telemetry = 0
        self.next_ntp = 0
        self.clock_set = hw.wall_s() is not None
        self.running = True
        self.errors = 0

    def topic(self, kind):
        return vendproto.topic(config.MQTT_PREFIX, self.machine_id, kind)

    # --- MQTT ---------------------------------------------------------------------------

    def _on_message(self, topic, msg):
        # Called from inside the client's read (also while it waits for a PUBACK): queue
        # only, so handling a command never re-enters the client.
        self.inbox.append((bytes(topic), bytes(msg)))

    def _connect(self, now):
        client = net.mqtt_client(self.machine_id)
        client.set_callback(self._on_message)
        client.set_last_will(self.topic(vendproto.STATUS), vendproto.OFFLINE_PAYLOAD, True, 1)
        client.connect(clean_session=False)
        self.client = client
        # Subscribe before announcing ONLINE: the backend answers ONLINE with sync.
        client.subscribe(self.topic(vendproto.COMMAND), 1)
        client.subscribe(self.topic(vendproto.CONFIG), 1)
        self.failures = 0
        self.next_ping = now + config.MQTT_KEEPALIVE_S * 500
        log("mqtt connected to", config.MQTT_HOST, config.MQTT_PORT)
        self._run(self.device.on_connect(now), now)

    def _drop(self, why):
        if self.client is not None:
            log("mqtt connection lost:", why)
            try:
                self.client.sock.close()
            except Exception:
                pass
        self.client = None

    def _publish(self, kind, payload, retain):
        if self.client is None:
            return
        try:
            # Retained status at QoS 1; results and telemetry at QoS 0: results are re-sent
            # until acknowledged, which is what makes them reliable (protocol.md).
            self.client.publish(self.topic(kind), payload, retain, 1 if retain else 0)
        except Exception as exc:
            self._drop(exc)

    def _run(self, actions, now):
        for action in actions:
            if action[0] == vendproto.PUBLISH:
                self._publish(action[1], action[2], action[3])
            elif action[0] == vendproto.START:
                log("dispense", action[1]["commandId"], "slot", action[1]["slot"])
                self.dispenser.start(action[1], action[2], now)

    # --- one pass of the loop -----------------------------------------------------------

    def step(self):
        now = self.clock.now_ms()
        self.watchdog.feed()
        switched = self.maintenance.poll(now)
        if switched is not None:
            log("maintenance", switched)
            self._run(self.device.set_maintenance(switched), now)
        done = self.dispenser.poll(now)
        if done is not None:
            command_id, outcome = done
            success, dropped, duration_ms, error = outcome
            log("dispense done", command_id, success, dropped, error)
            self._run(
                self.device.finish_dispense(command_id, success, dropped, duration_ms, error, now),
                now,
            )
        self.led.value(1 if self.client is not None else 0)
        if not self.wifi.ensure(now):
            self._drop("wifi down")
            return
        if now >= self.next_ntp:
            self._sync_time(now)
        if self.client is None:
            if now < self.reconnect_at:
                return
            try:
                self._connect(now)
            except Exception as exc:  # OSError, or umqtt's MQTTException on a refusal
                self._drop(exc)
                self.failures += 1
                # 1, 2, 4 ... 30 s, jittered so a fleet does not reconnect in lockstep.
                delay = vendproto.backoff_ms(self.failures - 1)
                self.reconnect_at = now + delay // 2 + (os.urandom(1)[0] * delay) // 512
                log("mqtt connect failed:", exc, "retry in", self.reconnect_at - now, "ms")
                return
        try:
            self.client.check_msg()
        except Exception as exc:
            self._drop(exc)
            return
        self._handle_inbox(now)
        self._run(self.device.poll(now), now)
        self._telemetry(now)
        self._keepalive(now)

    def _handle_inbox(self, now):
        command_topic = self.topic(vendproto.COMMAND).encode()
        config_topic = self.topic(vendproto.CONFIG).encode()
        while self.inbox:
            topic, msg = self.inbox.pop(0)
            if topic == command_topic:
                self._run(self.device.on_command(msg, now, hw.wall_s()), now)
            elif topic == config_topic:
                actions = self.device.on_config(msg)
                if actions:
                    log("config applied, version", self.device.config["version"])
                    self.next_telemetry = now
                self._run(actions, now)

    def _sync_time(self, now):
        # Until the first success every NTP_RETRY_S; then every NTP_RESYNC_S against RTC drift.
        try:
            net.sync_time()
            self.clock_set = hw.wall_s() is not None
        except Exception as exc:
            log("ntp failed:", exc)
        interval = config.NTP_RESYNC_S if self.clock_set else config.NTP_RETRY_S
        self.next_ntp = now + interval * 1000

    def _telemetry(self, now):
        if now < self.next_telemetry:
            return
        interval = self.device.telemetry_interval_s(config.TELEMETRY_INTERVAL_S)
        self.next_telemetry = now + interval * 1000
        payload = vendproto.telemetry_payload(
            hw.wall_s(),
            self.thermometer.read_c(),
            self.wifi.rssi(),
            now // 1000,
            hw.free_mem(),
            self.device.maintenance,
        )
        self._publish(vendproto.TELEMETRY, payload, False)

    def _keepalive(self, now):
        if self.client is None or now < self.next_ping:
            return
        self.next_ping = now + config.MQTT_KEEPALIVE_S * 500
        try:
            self.client.ping()
        except Exception as exc:
            self._drop(exc)

    # --- lifecycle ----------------------------------------------------------------------

    def run_forever(self):
        try:
            while self.running:
                try:
                    self.step()
                    self.errors = 0
                except Exception as exc:
                    self.errors += 1
                    log("error in main loop:", repr(exc))
                    if self.errors >= MAX_ERRORS:
                        raise
                time.sleep_ms(config.LOOP_SLEEP_MS)
        finally:
            self.shutdown()

    def shutdown(self):
        """Planned stop: motors off, acks to flash, retained OFFLINE, clean disconnect."""
        self.dispenser.stop_all()
        self.device.flush()
        if self.client is not None:
            try:
                self.client.publish(
                    self.topic(vendproto.STATUS), vendproto.OFFLINE_PAYLOAD, True, 1
                )
                self.client.disconnect()
            except Exception:
                pass
            self.client = None


def main():
    app = App()
    try:
        app.run_forever()
    except Exception as exc:
        log("fatal:", repr(exc), "- resetting")
        import machine

        time.sleep_ms(1000)
        machine.reset()
