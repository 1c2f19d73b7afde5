"""Every use of a Flower internal, each pinned to the flwr version it was written against and contract-tested."""
