"""The local control API (HTTP on a Unix socket, optionally on loopback TCP)."""
