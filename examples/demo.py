"""The demo app: `squall examples.demo:app --workers 0` serves it on every core.

Each response says which worker answered, so repeated requests show the
load spread across the workers.
"""

import os

from squall import RequestHandler, task_id, web


class HelloHandler(RequestHandler):
    def get(self) -> None:
        self.write(f"Hello from squall worker {task_id()} (pid {os.getpid()})\n")


class EchoHandler(RequestHandler):
    def post(self) -> None:
        self.write({"worker": task_id(), "bytes": len(self.request.body)})


class GreetHandler(RequestHandler):
    async def get(self, name: str) -> None:
        self.write({"hello": name, "worker": task_id()})


app = web.Application(
    [
        (r"/", HelloHandler),
        (r"/echo", EchoHandler),
        (r"/hello/([^/]+)", GreetHandler),
    ]
)
