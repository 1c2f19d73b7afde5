"""Flower ServerApp (filled by the federation issue)."""
