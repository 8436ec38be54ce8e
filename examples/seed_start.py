"""The seed's second listing: `bind` + `start(2)` forks two workers."""

from squall import HTTPServer, run_forever, web


class MainHandler(web.RequestHandler):
    def get(self):
        self.write("Hello, world")


if __name__ == "__main__":
    application = web.Application([(r"/", MainHandler)])
    server = HTTPServer(application)
    server.bind(8888)
    server.start(2)
    run_forever()
