"""Lightning nodes read-only: one model of channels and forwards, LND and Core Lightning adapters."""
