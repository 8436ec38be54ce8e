"""Real framework apps (FastAPI, Starlette, Flask, Django) served by squall in tests/test_frameworks.py."""

from __future__ import annotations

# Apps that record what happened outside a request (lifespan, background tasks,
# disconnects) write files into the directory this environment variable names.
RECORD_DIR_ENV = "SQUALL_TEST_FRAMEWORK_DIR"
