"""An app whose import hangs while the file named by $SLOW_FLAG exists."""

import os
import time

from squall import web

while os.path.exists(os.environ["SLOW_FLAG"]):
    time.sleep(0.1)


class Pid(web.RequestHandler):
    def get(self) -> None:
        self.write({"pid": os.getpid()})


app = web.Application([(r"/", Pid)])
