"""Finding the app: import `MODULE:ATTR` and pick the interface that serves it."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import traceback
from typing import Any

from squall.errors import AppLoadError, UsageError

INTERFACES = ("auto", "squall", "asgi", "wsgi")


def import_app(spec: str) -> Any:
    """The object named by `MODULE:ATTR` (ATTR may be dotted); errors name the problem."""
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise UsageError(f"app must be given as MODULE:ATTR (for example 'app:app'), not {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise AppLoadError(f"could not import module {module_name!r}: no such module") from None
        raise AppLoadError(f"error while importing {module_name!r}: {_where(exc)}") from None
    except Exception as exc:
        raise AppLoadError(f"error while importing {module_name!r}: {_where(exc)}") from None
    obj: Any = module
    for name in attr_path.split("."):
        try:
            obj = getattr(obj, name)
        except AttributeError:
            raise AppLoadError(f"module {module_name!r} has no attribute {attr_path!r}") from None
    return obj


def _where(exc: BaseException) -> str:
    """`Type: message (file.py, line N)`: enough to find the fault, no traceback wall."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, SyntaxError):
        return text
    frames = traceback.extract_tb(exc.__traceback__)
    user_frames = [f for f in frames if "importlib" not in f.filename]
    if user_frames:
        last = user_frames[-1]
        text += f" ({last.filename}, line {last.lineno})"
    return text


def detect_interface(app: Any) -> str:
    """'squall', 'asgi' or 'wsgi' for an app object; AppLoadError when it is none of them."""
    from squall.web import Application

    if isinstance(app, Application):
        return "squall"
    if inspect.isclass(app) or not callable(app):
        raise AppLoadError(
            f"{app!r} is not an app: expected a squall Application or an ASGI callable"
        )
    call = app if inspect.isfunction(app) or inspect.ismethod(app) else app.__call__
    if inspect.iscoroutinefunction(call):
        return "asgi"
    try:
        params = [
            p
            for p in inspect.signature(call).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        params = []
    if len(params) == 2:
        return "wsgi"
    return "asgi"
