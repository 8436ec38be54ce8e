"""TLS on a listener: a server context from a certificate and key, offering h2 and http/1.1."""

from __future__ import annotations

import os
import ssl

from squall.errors import UsageError


def server_context(
    certfile: str, keyfile: str | None = None, password: str | None = None, http2: bool = True
) -> ssl.SSLContext:
    """A TLS server context (TLS 1.2 or newer) with ALPN `h2` (unless `http2` is False)
    and `http/1.1`; clear errors for bad files."""
    for path in (certfile, keyfile):
        if path is not None and not os.path.isfile(path):
            raise UsageError(f"cannot read TLS file {path!r}: no such file")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile, keyfile, password)
    except ssl.SSLError as exc:
        raise UsageError(f"cannot load TLS certificate {certfile!r}: {exc.reason or exc}") from None
    except OSError as exc:
        raise UsageError(f"cannot read TLS certificate or key: {exc.strerror or exc}") from None
    context.set_alpn_protocols(["h2", "http/1.1"] if http2 else ["http/1.1"])
    return context
