"""Durable state: the SQLite outbox (store-and-forward queue)."""
