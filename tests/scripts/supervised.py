"""The app the supervision tests serve; tests copy it and change VERSION between reloads."""

import asyncio
import os
import time

from squall import task_id, web

VERSION = "1"
SLOW_CALLS = 0  # how many times the app was given a /slow request


def block_the_loop() -> None:
    time.sleep(60)


class Version(web.RequestHandler):
    def get(self) -> None:
        self.write(VERSION)

    def post(self) -> None:
        self.write(VERSION)


class Pid(web.RequestHandler):
    def get(self) -> None:
        self.write(
            {"pid": os.getpid(), "task_id": task_id(), "version": VERSION, "slow_calls": SLOW_CALLS}
        )


class Slow(web.RequestHandler):
    async def get(self) -> None:
        global SLOW_CALLS
        SLOW_CALLS += 1
        await asyncio.sleep(float(self.get_argument("s", "2")))
        self.write("slow done")


class Block(web.RequestHandler):
    def get(self) -> None:
        block_the_loop()


LEAKED: list[bytearray] = []


class Leak(web.RequestHandler):
    def get(self) -> None:
        megabytes = int(self.get_argument("mb", "50"))
        LEAKED.append(bytearray(b"x" * (megabytes << 20)))  # touched: resident
        self.write({"pid": os.getpid(), "leaked_mb": megabytes * len(LEAKED)})


class Crash(web.RequestHandler):
    def get(self) -> None:
        self.finish("bye")
        asyncio.get_running_loop().call_later(0.05, os._exit, 1)


app = web.Application(
    [
        (r"/", Version),
        (r"/pid", Pid),
        (r"/slow", Slow),
        (r"/block", Block),
        (r"/crash", Crash),
        (r"/leak", Leak),
    ]
)
