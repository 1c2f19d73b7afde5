"""Bitcoin Core's P2P side as features: the node-telemetry vector (``telemetry``) for network watch."""
