"""bench/apps/big_app.py plus a route whose requests leave reference cycles, for gc_pauses.py.

    python -m squall bench.apps.cyclic_app:app --interface asgi --workers 2

`GET /tree` builds a small tree whose nodes point at their parent, as an ORM
session, a parsed document or a request context often does, and answers with
its size: each request leaves a few objects that only the garbage collector
frees. `GET /gc` answers with this worker's collections so far: count and
pause per generation (timed with `gc.callbacks`), and the objects the
collector had frozen.
"""

from __future__ import annotations

import gc
import os
import time
from typing import Any

from bench.apps.big_app import app

_pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
_started = [0.0]


def _time_collections(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
    else:
        _pauses[info["generation"]].append(time.perf_counter() - _started[0])


gc.callbacks.append(_time_collections)


def _node(parent: dict[str, Any] | None, name: str) -> dict[str, Any]:
    node: dict[str, Any] = {"name": name, "parent": parent, "children": []}
    if parent is not None:
        parent["children"].append(node)
    return node


@app.get("/tree")
async def tree() -> dict[str, int]:
    root = _node(None, "root")
    for branch in range(3):
        _node(_node(root, f"b{branch}"), "leaf")
    return {"nodes": 1 + 3 * 2}


@app.get("/gc")
async def collections() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "frozen": gc.get_freeze_count(),
        "generations": {
            str(generation): {
                "count": len(pauses),
                "total_ms": round(sum(pauses) * 1000, 3),
                "max_ms": round(max(pauses, default=0.0) * 1000, 3),
            }
            for generation, pauses in _pauses.items()
        },
    }
