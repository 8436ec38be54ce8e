"""hypercorn's settings for bench/h2load.py (`--config python:bench.peers.hypercorn_config`).

hypercorn closes a connection after 1,000 requests by default
(`keep_alive_max_requests`; over HTTP/2 with a GOAWAY that fails the
client's streams in flight): the other servers keep a connection as long
as the client does, and so does hypercorn here. Its command line sets the
rest (bind, workers, worker class, log level).
"""

keep_alive_max_requests = 2**62
