"""The pipeline between adapters and the outbox: registry touch, rules, filters."""
