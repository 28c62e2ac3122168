"""``type: mqtt``: local MQTT devices (adapter, topic templates, payload decoders)."""

from gateway.adapters.mqtt.adapter import MqttAdapter

__all__ = ["MqttAdapter"]
