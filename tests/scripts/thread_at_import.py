"""An app that starts a thread when imported: forked after a --preload import,
the workers get its memory but not the thread."""

import threading
import time

from squall import web

threading.Thread(target=time.sleep, args=(3600,), name="cache-refresher", daemon=True).start()


class Hello(web.RequestHandler):
    def get(self) -> None:
        self.write("hello")


app = web.Application([(r"/", Hello)])
