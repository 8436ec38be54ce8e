"""A Starlette app: GET / answers 200 with the 12-byte body "Hello, world".

Served by uvicorn and by squall --interface asgi in bench/compare.py.
"""

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route


async def homepage(request: Request) -> PlainTextResponse:
    return PlainTextResponse("Hello, world")


app = Starlette(routes=[Route("/", homepage)])
