"""The seed's scenario: fork_processes(3, max_restarts=3); children 0 and 1 serve.

GET /?exit=N answers with the worker's pid and task id, then exits with
status N. Child 2 exits 0 at once, so it is not restarted. The parent
records its task_id() and exit code in the file named by argv[2].
"""

import asyncio
import json
import os
import sys

from squall import HTTPServer, bind_sockets, fork_processes, run_forever, task_id, web

port, report = int(sys.argv[1]), sys.argv[2]


class MainHandler(web.RequestHandler):
    def get(self):
        self.write({"pid": os.getpid(), "task_id": task_id()})
        code = self.get_argument("exit", None)
        if code is not None:
            self.finish()
            asyncio.get_running_loop().call_later(0.05, os._exit, int(code))


sockets = bind_sockets(port, "127.0.0.1")
try:
    worker_id = fork_processes(3, max_restarts=3)
except SystemExit as exc:
    with open(report, "w") as f:
        json.dump({"task_id": task_id(), "exit": exc.code}, f)
    raise
if worker_id == 2:
    sys.exit(0)
server = HTTPServer(web.Application([(r"/", MainHandler)]))
server.add_sockets(sockets)
run_forever()
