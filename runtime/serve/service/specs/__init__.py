"""The documents that describe the service's protocols, from the same msgspec types it decodes with.

`asyncapi` describes the NATS protocol (`memoir schema`); `openapi` the HTTP API (`/openapi.json`).
"""
