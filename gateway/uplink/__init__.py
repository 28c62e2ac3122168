"""The cloud connection: batching, TLS, acknowledgements, status and downlink topics."""
