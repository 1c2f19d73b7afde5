"""Flower ClientApp (filled by the federation issue)."""
