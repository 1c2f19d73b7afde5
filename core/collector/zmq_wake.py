"""Optional ZMQ wake-up: Core's ``zmqpubsequence`` notifications end the poll loop's wait early.

pyzmq is not a dependency: without it the collector polls only (``zmq_available()`` is False). The
``sequence`` topic's body is a 32-byte hash and a label (A/R: transaction added/removed, C/D: block
connected/disconnected) with an 8-byte mempool sequence for A/R; any message just wakes the poll, which
reads the state over RPC.
"""

from __future__ import annotations

import re
import threading

from core.errors import ConfigError

__all__ = ["SequenceWaker", "zmq_available"]


def zmq_available() -> bool:
    """Whether pyzmq can be imported (it is optional: without it the collector only polls)."""
    try:
        import zmq  # noqa: F401
    except ImportError:
        return False
    return True


class SequenceWaker:
    """Subscribes to Core's ZMQ ``sequence`` topic and sets ``event`` on each message (wakes the poll loop)."""

    def __init__(self, endpoint: str, event: threading.Event) -> None:
        if not re.fullmatch(r"(tcp|ipc)://\S+", endpoint):
            raise ConfigError("zmq", f"{endpoint!r} is not a ZMQ endpoint such as tcp://127.0.0.1:28332")
        self.endpoint = endpoint
        self.event = event
        self.messages = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> SequenceWaker:
        self._thread = threading.Thread(target=self._loop, name="collector-zmq", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        import zmq

        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.SUBSCRIBE, b"sequence")
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.endpoint)
        try:
            while not self._stop.is_set():
                if sock.poll(100):
                    sock.recv_multipart()
                    self.messages += 1
                    self.event.set()
        finally:
            sock.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
