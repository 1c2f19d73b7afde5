"""Differential privacy: accounting as pure functions over an accountant history (accounting), and the
budget rules and their errors (budget). The training loop (models.training) uses both."""
