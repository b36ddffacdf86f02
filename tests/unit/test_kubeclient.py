"""speaker.kubeclient: failures in words (real urllib3 errors where they can be produced), the
in-cluster token re-read, a collection and a watch of any path, and what its import loads."""
import http.server
import json
import os
import socket
import subprocess
import sys
import threading

import pytest
from kubernetes.client.configuration import Configuration

from speaker import kubeclient
from speaker.kubeclient import KubeClient, KubeError, describe, http_line

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def client_for(host, read_timeout=5.0, **cfg):
    c = Configuration(host=host)
    for k, v in cfg.items():
        setattr(c, k, v)
    return KubeClient(None, read_timeout=read_timeout, configuration=c)


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    return port


def failure(fn):
    with pytest.raises(KubeError) as err:
        fn()
    line = str(err.value)
    assert "\n" not in line and "Traceback" not in line and "object at 0x" not in line, line
    return err.value, line


def test_connection_refused_in_words():
    port = closed_port()
    err, line = failure(lambda: list(client_for(f"http://127.0.0.1:{port}").list("/api/v1/nodes")))
    assert line == f"cannot reach the Kubernetes API at http://127.0.0.1:{port}: connection refused"
    assert err.status is None


def test_dns_failure_in_words():
    err, line = failure(lambda: client_for("https://no-such-host.invalid:6443").list("/api/v1/nodes"))
    assert line.startswith("cannot reach the Kubernetes API at https://no-such-host.invalid:6443: "
                           "DNS lookup of no-such-host.invalid failed"), line


class Silent:
    """A listener that accepts and never answers (read timeout)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]

    def close(self):
        self.sock.close()


def test_read_timeout_in_words():
    silent = Silent()
    try:
        kube = client_for(f"http://127.0.0.1:{silent.port}", read_timeout=0.3)
        _, line = failure(lambda: kube.watch("/api/v1/nodes", "1", 60, threading.Event()))
    finally:
        silent.close()
    assert line == f"cannot reach the Kubernetes API at http://127.0.0.1:{silent.port}: no answer in time (read timeout)"


def test_connect_timeout_in_words():
    """A listener whose backlog is full drops further SYNs, so connect() times out."""
    from urllib3.exceptions import MaxRetryError

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(0)
    port = s.getsockname()[1]
    fillers = [socket.socket() for _ in range(4)]
    try:
        for f in fillers:
            f.setblocking(False)
            f.connect_ex(("127.0.0.1", port))
        kube = client_for(f"http://127.0.0.1:{port}")
        with pytest.raises(MaxRetryError) as err:  # below KubeClient._request: urllib3's own error, retries 0
            kube.rest.request("GET", f"http://127.0.0.1:{port}/", _request_timeout=(0.3, 0.3))
    finally:
        for f in fillers:
            f.close()
        s.close()
    assert describe(err.value, kube.server) == f"cannot reach the Kubernetes API at http://127.0.0.1:{port}: connection timed out"


def test_tls_verification_failure_in_words(secure_api):
    paths, port = secure_api
    other = Configuration(host=f"https://127.0.0.1:{port}")  # the system's CAs, not the lab's
    kube = KubeClient(None, configuration=other)
    _, line = failure(lambda: kube.list("/api/v1/nodes"))
    assert line.startswith(f"cannot reach the Kubernetes API at https://127.0.0.1:{port}: TLS certificate "
                           "verification failed (") and "certificate" in line.split("(", 1)[1], line


def test_http_401_in_words(secure_api):
    paths, port = secure_api
    cfg = Configuration(host=f"https://127.0.0.1:{port}")
    cfg.ssl_ca_cert, cfg.api_key = paths["ca"], {"BearerToken": "Bearer wrong"}
    err, line = failure(lambda: KubeClient(None, configuration=cfg).list("/api/v1/nodes"))
    assert err.status == 401 and line.startswith(f"the Kubernetes API at https://127.0.0.1:{port} answered HTTP 401 Unauthorized")


class Answers(http.server.BaseHTTPRequestHandler):
    status = 503
    body = b""

    def do_GET(self):  # noqa: N802
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def answering():
    servers = []

    def start(status, body):
        handler = type("H", (Answers,), {"status": status, "body": body})
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}"
    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize("status, body, said", [
    (403, {"kind": "Status", "message": 'nodes is forbidden: User "system:serviceaccount:kube-system:podbgp" '
                                        'cannot list resource "nodes"'},
     'answered HTTP 403 Forbidden: nodes is forbidden: User "system:serviceaccount:kube-system:podbgp" cannot list'),
    (503, {"kind": "Status", "message": "the server is currently unable to handle the request"},
     "answered HTTP 503 Service Unavailable: the server is currently unable to handle the request"),
    (500, "upstream\nconnect error", "answered HTTP 500 Internal Server Error: upstream"),
    (502, "", "answered HTTP 502 Bad Gateway"),
])
def test_http_errors_in_words(answering, status, body, said):
    host = answering(status, (json.dumps(body) if isinstance(body, dict) else body).encode())
    err, line = failure(lambda: client_for(host).list("/api/v1/nodes"))
    assert err.status == status and line.startswith(f"the Kubernetes API at {host} {said}"), line


def test_watch_list_refused_is_watch_list_unsupported(answering):
    host = answering(422, json.dumps({"message": "sendInitialEvents is forbidden"}).encode())
    with pytest.raises(kubeclient.WatchListUnsupported) as err:
        client_for(host).watch_list("/api/v1/nodes", 60, threading.Event())
    assert err.value.status == 422 and "sendInitialEvents is forbidden" in str(err.value)


def test_describe_other_errors_and_the_full_clients_api_exception():
    from kubernetes.client.exceptions import ApiException

    exc = ApiException(status=404, reason="Not Found")
    exc.body = json.dumps({"message": 'nodes "nope" not found'})
    assert describe(exc, "https://a:6443") == 'the Kubernetes API at https://a:6443 answered HTTP 404 Not Found: nodes "nope" not found'
    assert describe(ValueError("bad\nthing")) == "ValueError: bad"
    assert http_line(599, b"x") == "the Kubernetes API answered HTTP 599: x"


def test_a_collection_and_a_watch_of_another_path(answering):
    """Nothing in the client is about Nodes: a Service list streams its items."""
    doc = {"kind": "ServiceList", "metadata": {"resourceVersion": "9"},
           "items": [{"metadata": {"namespace": "default", "name": "web"}}]}
    host = answering(200, json.dumps(doc).encode())
    listing = client_for(host).list(kubeclient.SERVICES)
    assert [i["metadata"]["name"] for i in listing] == ["web"] and listing.resource_version == "9"


def test_a_watch_stream_decoded_line_by_line(answering):
    """Events as the API streams them, one JSON line each; the last one cut off is not an event."""
    events = [{"type": "ADDED", "object": {"metadata": {"name": "a", "resourceVersion": "1"}}},
              {"type": "MODIFIED", "object": {"metadata": {"name": "ü", "resourceVersion": "2"}}}]
    body = b"".join(json.dumps(e, ensure_ascii=False).encode() + b"\n" for e in events) + b'{"type": "MOD'
    host = answering(200, body)
    got = list(client_for(host).watch(kubeclient.SERVICES, "1", 30, threading.Event()))
    assert got == events


@pytest.mark.parametrize("chunks, lines", [
    ([b"a\nb\n"], [b"a", b"b"]),
    ([b"a", b"b\n", b"\n", b"c\n\r\n"], [b"ab", b"c"]),
    ([b"x" * 5, b"y" * 5, b"z\nw"], [b"xxxxxyyyyyz"]),  # an unterminated last line is dropped
    ([b"\xc3", b"\xbc\n"], ["ü".encode()]),  # a character split across chunks
    ([], []),
])
def test_split_lines(chunks, lines):
    assert list(kubeclient.split_lines(iter(chunks))) == lines


def test_in_cluster_configuration_rereads_the_bound_token(in_cluster, secure_api, monkeypatch):
    """The DaemonSet's path: token and CA from the service account's files; once the loader's
    minute has passed, a rotated token file is read again for the next request."""
    import datetime as real

    from kubernetes.config import incluster_config

    paths, _ = secure_api
    kube = KubeClient(None)
    assert list(kube.list(kubeclient.NODES)) == []
    token_file = f"{paths['serviceaccount']}/token"
    with open(token_file, "w") as f:
        f.write("rotated")

    class Later(real.datetime):
        @classmethod
        def now(cls, tz=None):
            return real.datetime.now(tz) + real.timedelta(minutes=2)
    monkeypatch.setattr(incluster_config, "datetime", type("M", (), {"datetime": Later, "timedelta": real.timedelta}))
    assert kube.configuration.auth_settings()["BearerToken"]["value"] == "bearer rotated"
    err, _ = failure(lambda: kube.list(kubeclient.NODES))  # the lab API does not know that token
    assert err.status == 401


def test_importing_the_client_loads_no_models_and_the_full_package_still_works():
    code = (
        "import sys\n"
        "import speaker.kubeclient as k\n"
        "assert 'kubernetes.client.models' not in sys.modules, 'models'\n"
        "assert 'pydantic' not in sys.modules, 'pydantic'\n"
        "assert 'kubernetes.config.kube_config' not in sys.modules, 'kube_config'\n"
        "assert 'kubernetes.dynamic' not in sys.modules, 'dynamic'\n"
        "from kubernetes import client, config\n"  # someone else in the process wants it all
        "assert client.CoreV1Api and client.V1Node and config.load_kube_config and config.new_client_from_config\n"
        "import kubernetes\n"
        "assert kubernetes.__version__.startswith('37.') and kubernetes.dynamic\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
