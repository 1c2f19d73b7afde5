"""Test session set-up: nothing a test does touches the user's ~/.anya-fl (registry, tokens, audit log)."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("ANYA_FL_HOME", tempfile.mkdtemp(prefix="anya-fl-home-"))
