"""Lab API servers for unit tests: plain HTTP, or HTTPS with the lab's CA and a bearer token."""
import os
import shutil

import pytest
import yaml
from kubernetes import config
from kubernetes.config import incluster_config
from kubernetes.config.incluster_config import InClusterConfigLoader

from lab import pki
from lab.apiserver import serve, tls_context
from lab.kubestore import Store

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SA_USER = "system:serviceaccount:kube-system:podbgp"


def shipped_rules() -> list[dict]:
    """The rules deploy/'s ClusterRole grants the speaker's service account."""
    with open(os.path.join(ROOT, "deploy", "rbac.yaml")) as f:
        return next(d for d in yaml.safe_load_all(f) if d and d["kind"] == "ClusterRole")["rules"]


def _stop(servers, stopping, store):
    stopping.set()
    for s in servers:
        s.shutdown()
        s.server_close()
    store.close()


@pytest.fixture
def lab_api(tmp_path):
    """The lab API over HTTP on loopback; yields a kubeconfig path."""
    store = Store(str(tmp_path / "nodes.json"), history=50)
    servers, stopping = serve(store, [("127.0.0.1", 0, None)])
    port = servers[0].server_address[1]
    kc = tmp_path / "kubeconfig"
    kc.write_text(f"apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster: {{server: 'http://127.0.0.1:{port}'}}\n"
                  "contexts:\n- name: t\n  context: {cluster: t, user: t}\ncurrent-context: t\nusers:\n- name: t\n  user: {token: t}\n")
    try:
        yield str(kc)
    finally:
        _stop(servers, stopping, store)


@pytest.fixture
def secure_api(tmp_path):
    """The lab API over HTTPS demanding a token: the administrator's (paths["token"]), or the
    service account's (its files under paths["serviceaccount"]), which gets only what deploy/'s
    ClusterRole grants; yields (pki paths, port)."""
    if not shutil.which("openssl"):
        pytest.skip("openssl(1) is not installed")
    paths = pki.make(str(tmp_path / "pki"))
    with open(paths["sa_token_file"]) as f:
        sa_token = f.read()
    store = Store(str(tmp_path / "nodes.json"), history=50)
    servers, stopping = serve(store, [("127.0.0.1", 0, None)], tls=tls_context(paths["cert"], paths["key"]),
                              token=paths["token"], accounts=((sa_token, SA_USER, shipped_rules()),))
    try:
        yield paths, servers[0].server_address[1]
    finally:
        _stop(servers, stopping, store)


@pytest.fixture
def in_cluster(secure_api, monkeypatch):
    """The official client's in-cluster configuration pointed at secure_api, as a Pod finds it:
    service host and port from the environment, the token and CA from the service account's files.
    Yields the environment it used."""
    paths, port = secure_api
    sa = paths["serviceaccount"]
    env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(port)}

    def load(client_configuration=None):
        InClusterConfigLoader(token_filename=f"{sa}/token", cert_filename=f"{sa}/ca.crt",
                              environ=env).load_and_set(client_configuration)
    monkeypatch.setattr(config, "load_incluster_config", load)
    monkeypatch.setattr(incluster_config, "load_incluster_config", load)  # the name speaker.kubeclient calls
    yield env


@pytest.fixture
def admin(secure_api, tmp_path):
    """A CoreV1Api with the administrator's token (what kubectl uses in the lab)."""
    from kubernetes import client

    paths, port = secure_api
    kc = tmp_path / "admin-kubeconfig"
    kc.write_text(pki.kubeconfig(f"https://127.0.0.1:{port}", paths["ca"], paths["token"]))
    return client.CoreV1Api(config.new_client_from_config(config_file=str(kc)))
