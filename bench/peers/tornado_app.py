"""Tornado's own multi-process server: bind, then fork with start(2).

    python bench/peers/tornado_app.py PORT [WORKERS]

The seed's program with tornado imports: HTTPServer(app).bind(PORT,
"127.0.0.1"), start(2), then the IOLoop. GET / answers 200 with "Hello,
world". Tornado runs on the stock asyncio event loop, as it does by default.
"""

import sys

import tornado.httpserver
import tornado.ioloop
import tornado.web


# tornado is installed in bench/.venv only: to mypy, RequestHandler is Any.
class MainHandler(tornado.web.RequestHandler):  # type: ignore[misc]
    def get(self) -> None:
        self.write("Hello, world")


def main() -> None:
    port = int(sys.argv[1])
    workers = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    application = tornado.web.Application([(r"/", MainHandler)])
    server = tornado.httpserver.HTTPServer(application)
    server.bind(port, address="127.0.0.1")
    server.start(workers)
    tornado.ioloop.IOLoop.current().start()


if __name__ == "__main__":
    main()
