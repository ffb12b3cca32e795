"""The MQTT wire contract between vendhub and vending machines (protocol.md)."""
