"""WORKAROUND: ``flower-supernode`` with its hardcoded poll sleeps capped (Flower 1.42).

Flower 1.42's SuperNode loop sleeps a hardcoded 3 s whenever a pull finds no message
(``flwr/supernode/start_client_internal.py``), and 0.5 s while it waits for the ClientApp's reply, so
every message waits up to 3.5 s longer than it needs to. There is no flag or env for it. This wrapper
replaces ``time.sleep`` inside that one module only (a private copy of the ``time`` namespace) with a
sleep capped at ``ANYA_FL_SUPERNODE_POLL_S`` seconds (default 0.2), then runs the normal
``flower-supernode`` entry point with the same arguments. Cost: an idle node polls the SuperLink
about five times a second instead of once every three seconds.

Run it as a script (``python .../anya_fl/fast_supernode.py <flower-supernode flags>``) so its own
directory, not the repository, lands on ``sys.path`` of the SuperNode. Drop it once Flower makes the
interval configurable. It relies on the module attribute ``time`` of Flower's module; if that
changes, the wrapper fails loudly at start instead of silently doing nothing.
"""

from __future__ import annotations

import os
import sys
import time
import types

ENV_POLL = "ANYA_FL_SUPERNODE_POLL_S"


def patch(poll_s: float) -> None:
    """Cap ``time.sleep`` calls made by Flower's SuperNode loop at ``poll_s`` seconds."""
    import flwr.supernode.start_client_internal as sci

    if getattr(sci, "time", None) is not time:
        raise RuntimeError("flwr.supernode.start_client_internal no longer uses `time`: the workaround does not apply")
    real_sleep = time.sleep
    capped = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith("__")})
    capped.sleep = lambda seconds: real_sleep(min(seconds, poll_s))
    sci.time = capped


def main() -> int:
    """Patch, then run flower-supernode with this process's arguments."""
    poll_s = float(os.environ.get(ENV_POLL, "0.2"))
    if not 0.01 <= poll_s <= 3.0:
        raise SystemExit(f"{ENV_POLL}: {poll_s} must be in [0.01, 3]")
    patch(poll_s)
    from flwr.supernode.cli.flower_supernode import flower_supernode

    sys.argv[0] = "flower-supernode"
    return flower_supernode() or 0


if __name__ == "__main__":
    sys.exit(main())
