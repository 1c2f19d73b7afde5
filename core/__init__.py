"""Torch-free foundation: data, Bitcoin schema, scoring, node health, inference, serving."""
