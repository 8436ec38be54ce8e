"""An app that cannot be imported while the file named by $FLAKY_FLAG exists,
as when a dependency is briefly down while a worker is replaced."""

import os

from squall import web

if os.path.exists(os.environ["FLAKY_FLAG"]):
    raise RuntimeError("the database is down")


class Pid(web.RequestHandler):
    def get(self) -> None:
        self.write({"pid": os.getpid()})


app = web.Application([(r"/", Pid)])
