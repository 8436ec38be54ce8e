"""The seed's third listing: what `start(2)` is made of."""

from squall import HTTPServer, bind_sockets, fork_processes, run_forever, web


class MainHandler(web.RequestHandler):
    def get(self):
        self.write("Hello, world")


if __name__ == "__main__":
    application = web.Application([(r"/", MainHandler)])
    sockets = bind_sockets(8888)
    fork_processes(2)
    server = HTTPServer(application)
    server.add_sockets(sockets)
    run_forever()
