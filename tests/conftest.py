"""Test session set-up: nothing a test does touches the user's ~/.anya-fl (registry, tokens, audit log): a
temporary home is used, and removed at exit. No test has a wall-clock limit by default: Hypothesis's
per-example deadline and its "too slow" health check are off (a busy 2-core machine trips them; speed is
measured by ``anya-fl bench``, not asserted by tests)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

from hypothesis import HealthCheck, settings

if "ANYA_FL_HOME" not in os.environ:
    os.environ["ANYA_FL_HOME"] = tempfile.mkdtemp(prefix="anya-fl-home-")
    atexit.register(shutil.rmtree, os.environ["ANYA_FL_HOME"], ignore_errors=True)

settings.register_profile("anya-fl", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("anya-fl")
