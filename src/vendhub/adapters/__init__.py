"""Concrete adapters: database, MQTT, payment gateways."""
