"""Bitcoin-facing code: the feature schema, Core JSON parsing, fee estimation."""
