"""An app for the operations tests: each request to /log writes one log line from the worker.

OPS_APP_BOOT_DELAY (seconds) makes importing it slow, so that a test can
signal a worker while it boots.
"""

import logging
import os
import time

from squall import task_id, web

logger = logging.getLogger("squall.test")

time.sleep(float(os.environ.get("OPS_APP_BOOT_DELAY", "0")))


class Log(web.RequestHandler):
    def get(self) -> None:
        message = self.get_argument("msg", "hello")
        logger.warning("ops-app says %s", message)
        self.write({"pid": os.getpid(), "task_id": task_id()})


class Pid(web.RequestHandler):
    def get(self) -> None:
        self.write({"pid": os.getpid(), "task_id": task_id()})

    def post(self) -> None:
        self.write({"pid": os.getpid(), "task_id": task_id(), "size": len(self.request.body)})


app = web.Application([(r"/log", Log), (r"/pid", Pid)])
