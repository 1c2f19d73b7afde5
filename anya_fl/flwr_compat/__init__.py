"""Every use of a Flower internal, each pinned to the flwr version it was written against and contract-tested.

Each module here calls :func:`require_pinned_flwr` at import, so a different Flower fails loudly at
start instead of misbehaving; ``tests/test_flwr_compat.py`` checks each internal's shape against
the installed Flower. Public Flower APIs are used elsewhere; internals only here.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

PINNED_FLWR = "1.42.0"  # pyproject.toml pins flwr[simulation]==1.42.0


class FlowerVersionError(RuntimeError):
    """The installed Flower is not the one these internals were written against."""


def require_pinned_flwr(module: str) -> None:
    """Raise :class:`FlowerVersionError` unless the installed flwr is :data:`PINNED_FLWR`."""
    try:
        installed = version("flwr")
    except PackageNotFoundError:
        installed = "not installed"
    if installed != PINNED_FLWR:
        raise FlowerVersionError(f"{module} uses Flower {PINNED_FLWR} internals, but flwr is {installed}: "
                                 f"install flwr=={PINNED_FLWR} (scripts/setup-env) or port {module}")
