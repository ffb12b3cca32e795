"""Prometheus metrics, one registry per running app (tests run several side by side)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.messages_in = Counter(
            "vendhub_mqtt_messages_in_total", "MQTT messages received", ["kind"], registry=r
        )
        self.messages_out = Counter(
            "vendhub_mqtt_messages_out_total", "MQTT messages published", ["kind"], registry=r
        )
        self.invalid_payloads = Counter(
            "vendhub_mqtt_invalid_payloads_total",
            "Inbound MQTT payloads dropped as invalid",
            ["kind"],
            registry=r,
        )
        self.telemetry_dropped = Counter(
            "vendhub_telemetry_dropped_total",
            "Telemetry readings dropped because the intake queue was full",
            registry=r,
        )
        self.telemetry_paused = Counter(
            "vendhub_telemetry_paused_total",
            "Times the telemetry stream stopped reading because the intake queue was full",
            registry=r,
        )
        self.results = Counter(
            "vendhub_dispense_results_total", "Dispense results by outcome", ["outcome"], registry=r
        )
        self.retransmissions = Counter(
            "vendhub_command_retransmissions_total", "Dispense commands re-published", registry=r
        )
        self.gave_up = Counter(
            "vendhub_commands_given_up_total",
            "Dispense commands failed for lack of a result",
            registry=r,
        )
        self.webhooks = Counter(
            "vendhub_payment_notifications_total",
            "Payment notifications by outcome",
            ["outcome"],
            registry=r,
        )
        self.mqtt_connected = Gauge(
            "vendhub_mqtt_connected", "1 while connected to the broker", registry=r
        )
        self.telemetry_connected = Gauge(
            "vendhub_mqtt_telemetry_connected",
            "1 while the telemetry stream's own connection is subscribed",
            registry=r,
        )
        self.queue_depth = Gauge(
            "vendhub_queue_depth", "Items waiting in in-process queues", ["queue"], registry=r
        )
        self.units = Counter(
            "vendhub_units_settled_total", "Dispense units settled", ["outcome"], registry=r
        )
        self.commands_by_state = Gauge(
            "vendhub_commands", "Dispense units by state (at scrape)", ["state"], registry=r
        )
        self.orders_by_status = Gauge(
            "vendhub_orders", "Orders by status (at scrape)", ["status"], registry=r
        )
        self.outbox_pending = Gauge(
            "vendhub_outbox_pending", "Outbox rows not yet published", registry=r
        )
        self.dispense_latency = Histogram(
            "vendhub_dispense_latency_seconds",
            "Command first sent → result applied",
            buckets=(0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30, 60),
            registry=r,
        )

        self.pass_row_failures = Counter(
            "vendhub_pass_row_failures_total",
            "Rows a periodic pass failed to handle (retried on a later pass)",
            ["pass"],
            registry=r,
        )

    def row_failed(self, pass_name: str) -> None:
        self.pass_row_failures.labels(pass_name).inc()

    def unit_settled(self, dropped: bool, latency_s: float | None) -> None:
        self.units.labels("dropped" if dropped else "failed").inc()
        if latency_s is not None:
            self.dispense_latency.observe(latency_s)
