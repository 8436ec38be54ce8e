"""An app whose import hangs while the file named by $SLOW_FLAG exists."""

import os
import time

from squall import web

if os.path.exists(os.environ["SLOW_FLAG"]):
    open(os.environ["SLOW_FLAG"] + ".importing", "w").close()  # a marker: the import waits
while os.path.exists(os.environ["SLOW_FLAG"]):
    time.sleep(0.1)


class Pid(web.RequestHandler):
    def get(self) -> None:
        self.write({"pid": os.getpid()})


app = web.Application([(r"/", Pid)])
