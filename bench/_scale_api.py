"""The lab API server for bench.scale: lab.apiserver's store and handlers, without persistence.

    python -m bench._scale_api --state FILE --listen HOST:PORT[@NETNS] ...

lab.kubestore rewrites its whole state file on every write (tens of MB at 5,000 Nodes), which
at N/300 status patches per second would make the API server, not the speaker, the thing under
load. This loads the state file once (the same JSON format) and then keeps the store in memory;
everything else is lab.apiserver unchanged. A lab store that persists incrementally (it takes a
`persist_interval`) is run as `python -m lab.apiserver` itself.
"""
from __future__ import annotations

import argparse
import inspect
import logging
import signal
import threading

from lab.apiserver import serve
from lab.kubestore import Store


def main(argv: list[str] | None = None) -> int:
    if "persist_interval" in inspect.signature(Store.__init__).parameters:
        # a store that persists incrementally (a log, at most once per interval): use it as it is
        from lab.apiserver import main as lab_main
        return lab_main(argv)
    ap = argparse.ArgumentParser(prog="bench._scale_api")
    ap.add_argument("--state", required=True)
    ap.add_argument("--listen", action="append", required=True)
    ap.add_argument("--history", type=int, default=1000)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    listeners = []
    for spec in args.listen:
        addr, _, netns = spec.partition("@")
        host, _, port = addr.rpartition(":")
        listeners.append((host.strip("[]"), int(port), netns or None))
    store = Store(args.state, history=args.history)
    store.path = None  # in memory from here on
    servers, stopping = serve(store, listeners)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    print("ready", flush=True)
    done.wait()
    stopping.set()
    for srv in servers:
        srv.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
