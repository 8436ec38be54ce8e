"""`bind` + `start(n)` with n from argv; an optional CPU list restricts affinity first."""

import os
import sys

from squall import HTTPServer, run_forever, task_id, web


class PidHandler(web.RequestHandler):
    def get(self):
        self.write(
            {"pid": os.getpid(), "task_id": task_id(), "env": os.environ.get("SQUALL_WORKER_ID")}
        )


port, count = int(sys.argv[1]), int(sys.argv[2])
if len(sys.argv) > 3:
    os.sched_setaffinity(0, {int(cpu) for cpu in sys.argv[3].split(",")})
server = HTTPServer(web.Application([(r"/", PidHandler)]))
server.bind(port, "127.0.0.1")
server.bind(port + 1, "127.0.0.1")  # several binds before start
server.start(count)
run_forever()
