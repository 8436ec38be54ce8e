"""An ASGI app whose worker exits 1 shortly after it is ready: a crash loop."""

import asyncio
import os


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        message = await receive()
        assert message["type"] == "lifespan.startup"
        await send({"type": "lifespan.startup.complete"})
        asyncio.get_running_loop().call_later(0.05, os._exit, 1)
        await receive()
        return
