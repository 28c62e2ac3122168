"""Prometheus metrics of CoAP adapters, registered once per registry (adapters restart)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.metrics import metric_set


class CoapMetrics:
    """Counters shared by every ``coap`` adapter instance on one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "gateway_coap_requests", "Reading requests answered, by response code",
            ["adapter", "code"], registry=registry)
        self.malformed = Counter(
            "gateway_coap_malformed", "Requests refused for what they carry (undecodable "
            "payload, unsupported format, oversized, bad block-wise transfer, unknown critical "
            "option), by reason", ["adapter", "reason"], registry=registry)
        self.dropped = Counter(
            "gateway_coap_dropped", "Datagrams dropped unanswered (not CoAP, type and code "
            "that do not fit, too many waiting for one peer) and errors inside aiocoap, by "
            "reason", ["adapter", "reason"], registry=registry)
        self.duplicate_entries = Gauge(
            "gateway_coap_duplicate_cache_entries", "Requests remembered for duplicate "
            "detection (bounded)", ["adapter"], registry=registry)
        self.notifications = Counter(
            "gateway_coap_notifications", "Observe notifications and poll responses received "
            "from devices", ["adapter", "result"], registry=registry)
        self.registrations = Counter(
            "gateway_coap_observe_registrations", "Observations registered (again after a "
            "device rebooted or went quiet)", ["adapter"], registry=registry)
        self.commands = Counter(
            "gateway_coap_commands", "Commands sent to devices, by result",
            ["adapter", "result"], registry=registry)


def coap_metrics(registry: CollectorRegistry) -> CoapMetrics:
    """The CoAP metrics on ``registry``, created on first use."""
    return metric_set(registry, CoapMetrics)
