"""Edge gateway: local devices to a cloud MQTT broker, durably, online or offline."""

__version__ = "0.1.0"
