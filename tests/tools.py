"""Helpers for tests that need a program from the machine (redis-server, promtool, chromium)."""

import os
import shutil

import pytest


def require_program(name: str, install: str) -> str:
    """The path of ``name``; skipped if missing, failed instead under
    ``SURGEFLOW_REQUIRE_SERVICES=1`` (CI installs everything the suite needs)."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed ({install})"
        if os.environ.get("SURGEFLOW_REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path
