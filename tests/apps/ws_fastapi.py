"""A FastAPI app with a WebSocket endpoint and HTTP routes, for tests/test_websocket.py.

- `GET /http`            {"hello": "http"}
- `WS /ws`               every JSON message back as {"echo": message}
- `WS /items/{item_id}`  sends {"item": item_id, "q": q} once, then closes with 1000
- any other WebSocket path: Starlette's router refuses it (403)
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

app = FastAPI()


@app.get("/http")
async def plain() -> dict[str, Any]:
    return {"hello": "http"}


@app.websocket("/ws")
async def echo_json(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            message = await websocket.receive_json()
            await websocket.send_json({"echo": message})
    except WebSocketDisconnect:
        pass


@app.websocket("/items/{item_id}")
async def item(websocket: WebSocket, item_id: int, q: str = "") -> None:
    await websocket.accept()
    await websocket.send_json({"item": item_id, "q": q})
    await websocket.close(code=1000)
