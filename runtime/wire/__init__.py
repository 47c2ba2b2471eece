"""The wire layer: how Memoir names things on NATS, the command/reply protocol, and shared NATS helpers."""
