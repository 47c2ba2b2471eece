"""The serve layer: the service, the NATS transport and client, the process (`memoir run`) and its CLI."""
