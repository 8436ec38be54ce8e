"""address=None: one port on every interface, IPv4 and IPv6."""

import sys

from squall import HTTPServer, run_forever, web


class Hello(web.RequestHandler):
    def get(self):
        self.write(self.request.remote_ip)


server = HTTPServer(web.Application([(r"/", Hello)]))
server.bind(int(sys.argv[1]))
server.start(2)
run_forever()
