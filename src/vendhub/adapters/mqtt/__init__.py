"""MQTT: the client with its reconnect loop, and the embedded broker."""
