"""The seed's first listing: one process, `listen`."""

from squall import HTTPServer, run_forever, web


class MainHandler(web.RequestHandler):
    def get(self):
        self.write("Hello, world")


if __name__ == "__main__":
    application = web.Application([(r"/", MainHandler)])
    server = HTTPServer(application)
    server.listen(8888)
    run_forever()
