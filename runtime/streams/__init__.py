"""The streams layer: the outbox publisher, pull loops, views and consumers."""
