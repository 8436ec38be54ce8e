"""squall's native handler API (tornado's): GET / answers 200 with "Hello, world".

Served by `python -m squall bench.peers.squall_native:app --interface squall`
in bench/compare.py; the same handler as bench/peers/tornado_app.py.
"""

from squall import web


class MainHandler(web.RequestHandler):
    def get(self) -> None:
        self.write("Hello, world")


app = web.Application([(r"/", MainHandler)])
