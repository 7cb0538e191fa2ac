"""The DNS model and wire format: query parsing, the zone model, resolving a question to encoded sections."""
