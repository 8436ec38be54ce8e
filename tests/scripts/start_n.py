"""`bind` (twice) + `start(n)`: argv is PORT SECOND_PORT N [CPU,CPU...] (restricts affinity first)."""

import os
import sys

from squall import HTTPServer, run_forever, task_id, web


class PidHandler(web.RequestHandler):
    def get(self):
        self.write(
            {"pid": os.getpid(), "task_id": task_id(), "env": os.environ.get("SQUALL_WORKER_ID")}
        )


port, second_port, count = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
if len(sys.argv) > 4:
    os.sched_setaffinity(0, {int(cpu) for cpu in sys.argv[4].split(",")})
server = HTTPServer(web.Application([(r"/", PidHandler)]))
server.bind(port, "127.0.0.1")
server.bind(second_port, "127.0.0.1")  # several binds before start
server.start(count)
run_forever()
