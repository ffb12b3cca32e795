"""Long-running loops of `vendhub serve`: MQTT intake, outbox publisher, timers."""
