"""A Flask app for tests/test_frameworks.py: `squall tests.frameworks.flask_app:app`.

- `GET /`               plain text
- `GET /hello?name=`    a query parameter
- `POST /form`          form fields back as JSON
- `POST /json`          a JSON body back, with a computed field
- `GET /stream?n=&who=` a generator under stream_with_context (reads request.args late)
- `GET /headers`        a custom response header, a cookie, and a request header echo
- `GET /old`            redirect to /hello
- `GET /missing`        abort(404)
- `GET /boom`           raises: Flask answers 500
- `GET /worker`         environ["squall.worker_id"] and the pid
- `POST /echo`          the size and hash of the request body as Flask reads it
- `GET /ticks?token=T`  a bounded stream of ticks; how it ended (`closed N` when the
                        server closed it early, `ran-out`) goes into `ticks-T`
- `GET /big?token=T`    64 MiB in 64 KiB chunks; how far the generator got goes
                        into `big-T` every MiB
All files go into the directory named by `RECORD_DIR_ENV`.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flask import Flask, Response, abort, jsonify, redirect, request, stream_with_context, url_for

from tests.frameworks import RECORD_DIR_ENV

app = Flask(__name__)


def record(name: str, text: str) -> None:
    directory = os.environ.get(RECORD_DIR_ENV)
    if directory:
        Path(directory, name).write_text(text)


@app.get("/")
def index() -> str:
    return "hello, flask"


@app.get("/hello")
def hello() -> str:
    return f"hello, {request.args.get('name', 'world')}"


@app.post("/form")
def form() -> Any:
    return jsonify(fields=request.form.to_dict(flat=False), content_type=request.mimetype)


@app.post("/json")
def json_echo() -> Any:
    data = request.get_json()
    return jsonify(received=data, keys=sorted(data))


@app.get("/stream")
def stream() -> Response:
    count = int(request.args.get("n", "5"))

    @stream_with_context
    def generate() -> Iterator[str]:
        for i in range(count):
            # request is still usable here, after the view returned
            yield f"{request.args.get('who', 'anon')}-{i};"

    return Response(generate(), mimetype="text/plain")


@app.get("/headers")
def headers() -> Response:
    response = jsonify(echo=request.headers.get("X-Echo"))
    response.headers["X-Custom"] = "flask-value"
    response.set_cookie("session", "flask-cookie")
    response.set_cookie("theme", "light")
    return response


@app.get("/old")
def old() -> Response:
    return redirect(url_for("hello", name="redirected"))


@app.get("/missing")
def missing() -> None:
    abort(404)


@app.get("/boom")
def boom() -> None:
    raise RuntimeError("flask view failed on purpose")


@app.get("/worker")
def worker() -> Any:
    return jsonify(worker_id=request.environ.get("squall.worker_id"), pid=os.getpid())


@app.post("/echo")
def echo() -> Any:
    data = request.get_data()
    return jsonify(size=len(data), sha256=hashlib.sha256(data).hexdigest())


@app.get("/ticks")
def ticks() -> Response:
    token = request.args["token"]

    def generate() -> Iterator[bytes]:
        i = 0
        try:
            for i in range(300):  # about 3 s at most
                yield f"tick-{i};".encode()
                time.sleep(0.01)
        except GeneratorExit:
            record(f"ticks-{token}", f"closed {i}")
            raise
        record(f"ticks-{token}", "ran-out")

    return Response(generate(), mimetype="text/plain")


@app.get("/big")
def big() -> Response:
    token = request.args["token"]
    piece = b"z" * 65536

    def generate() -> Iterator[bytes]:
        for i in range(1024):
            if i % 16 == 0:
                record(f"big-{token}", str(i * len(piece)))
            yield piece
        record(f"big-{token}", "all")

    return Response(generate(), mimetype="application/octet-stream")
