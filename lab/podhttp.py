"""A lab Pod's workload: HTTP on port 8080 (IPv4 and IPv6) answering every GET with the Pod's name.

Run inside the Pod's network namespace by the lab runner:
    ip netns exec POD python -m lab.podhttp --name NAME
Prints `ready` on stdout once it listens; SIGTERM stops it.
"""
from __future__ import annotations

import argparse
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = 8080


class _Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 128

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # one socket, both families
        super().server_bind()


def _handler(name: str) -> type[BaseHTTPRequestHandler]:
    body = (name + "\n").encode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "podhttp"

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:  # quiet: many short connections
            pass

    return Handler


def serve(name: str, port: int = PORT) -> None:
    server = _Server(("::", port), _handler(name))
    stop = threading.Event()

    def on_term(_sig, _frame) -> None:
        stop.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    print("ready", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.podhttp", description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="the Pod's name: the body of every answer")
    parser.add_argument("--port", type=int, default=PORT)
    args = parser.parse_args(argv)
    serve(args.name, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
