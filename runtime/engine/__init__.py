"""The engine layer: entity actors, the runtime that routes commands to them, and history (time travel)."""
