"""anya-fl: federated learning for Bitcoin node operators."""

__version__ = "0.1.0"
