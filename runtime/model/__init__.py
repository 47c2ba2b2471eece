"""The model layer: what users write (entities, effects, events) and what is stored (envelopes). No I/O."""
