"""Adapters: one module or subpackage per protocol, registered under ``gateway.adapters``."""

from gateway.adapters.base import Adapter, AdapterConfig, AdapterContext, Sink

__all__ = ["Adapter", "AdapterConfig", "AdapterContext", "Sink"]
