"""Error types shared by every layer; each message names the field and the problem."""

from __future__ import annotations


class AnyaError(Exception):
    """Base class for errors shown to users as a one-line message (never a traceback)."""


class FeatureError(AnyaError, ValueError):
    """Input that does not fit the feature schema: names the field and what is wrong with it."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class ConfigError(AnyaError, ValueError):
    """A setting with an invalid value: names the setting and what is wrong with it."""

    def __init__(self, setting: str, problem: str) -> None:
        self.setting = setting
        self.problem = problem
        super().__init__(f"{setting}: {problem}")


class DatasetError(AnyaError):
    """A dataset directory that is missing, incomplete or of another schema version."""
