"""A stand-in for a service process, for System's tests: ``python dummy_service.py <command> <name>``.

Follows the services' convention: its port in ``<NAME>_HTTP_PORT``,
``GET /readyz`` answers 200. ``DUMMY_MODE``: ``serve`` (default), ``die`` (exit 3 at once),
``stubborn`` (ignore SIGTERM). ``migrate`` and ``seed`` write ``<OMS_VAR_DIR>/<name>.<command>.done``
and exit, or exit 2 when ``DUMMY_MODE=fail-<command>``.
"""

from __future__ import annotations

import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        body = f"{os.environ.get('DUMMY_GREETING', 'ok')} {os.getpid()}".encode()
        self.send_response(200 if self.path in ("/readyz", "/healthz") else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def main() -> int:
    command = sys.argv[1]
    name = sys.argv[2]
    mode = os.environ.get("DUMMY_MODE", "serve")
    if command in ("migrate", "seed"):
        if mode == f"fail-{command}":
            print(f"{command} failed on purpose", flush=True)
            return 2
        Path(os.environ["OMS_VAR_DIR"], f"{name}.{command}.done").write_text("done")
        return 0
    if mode == "die":
        print("dying on purpose", flush=True)
        return 3
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ[f"{name.upper()}_HTTP_PORT"])), Handler)
    print(f"serving on {server.server_address}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
