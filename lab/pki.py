"""The lab's certificate authority and service-account credentials, made with openssl(1).

One CA per lab, a serving certificate for the lab API server (127.0.0.1, ::1, localhost and the
names of the in-cluster Service), an administrator's token (the kubeconfigs: kubectl, tests) and
the files a Pod finds in its service-account mount: `token` (a token of its own, which the lab
API allows only what the service account's RBAC grants), `ca.crt` and `namespace`. Nothing here
touches the host's own copies.
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import uuid

SAN = "IP:127.0.0.1,IP:::1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"


class PKIError(Exception):
    pass


def _openssl(*args: str, cwd: str) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise PKIError(f"openssl {args[0]} failed: {proc.stderr.strip()[:300]}")


def make(directory: str, namespace: str = "kube-system") -> dict[str, str]:
    """Create the CA, the server's key pair and a service account under directory; return paths."""
    os.makedirs(directory, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "ca.key", "-out", "ca.crt", "-days", "7", "-subj", "/CN=podbgp-lab-ca", cwd=directory)
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=kube-apiserver", cwd=directory)
    with open(os.path.join(directory, "server.ext"), "w") as f:
        f.write(f"subjectAltName={SAN}\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.crt", "-days", "7", "-extfile", "server.ext", cwd=directory)
    sa = os.path.join(directory, "serviceaccount")
    os.makedirs(sa, exist_ok=True)
    token = secrets.token_urlsafe(32)
    for path, text in ((os.path.join(sa, "token"), secrets.token_urlsafe(32)),
                       (os.path.join(sa, "namespace"), namespace), (os.path.join(directory, "admin-token"), token)):
        with open(path, "w") as f:
            f.write(text)
    with open(os.path.join(directory, "ca.crt")) as src, open(os.path.join(sa, "ca.crt"), "w") as dst:
        dst.write(src.read())
    for name in ("ca.key", "server.key", "admin-token", os.path.join("serviceaccount", "token")):
        os.chmod(os.path.join(directory, name), 0o600)
    return {"ca": os.path.join(directory, "ca.crt"), "cert": os.path.join(directory, "server.crt"),
            "key": os.path.join(directory, "server.key"), "token_file": os.path.join(directory, "admin-token"),
            "token": token, "serviceaccount": sa, "sa_token_file": os.path.join(sa, "token")}


def bound_account(directory: str, node: str, namespace: str, account: str, pod: str) -> dict:
    """A bound service-account token for the speaker Pod on node, as the kubelet's projected token
    is bound (Kubernetes 1.30 on): its own mount directory (token, ca.crt, namespace) and the identity
    the lab API server gives that token: the service account's user and groups, and the extra of a
    token bound to a Pod (node name, pod name and uid, credential id). The identity is kept in
    directory/accounts/NODE.json, outside the mount. Returns the identity with "mount" added."""
    mount = os.path.join(directory, f"serviceaccount-{node}")
    os.makedirs(mount, exist_ok=True)
    os.makedirs(os.path.join(directory, "accounts"), exist_ok=True)
    with open(os.path.join(directory, "ca.crt")) as src:
        ca = src.read()
    for name, text in (("token", secrets.token_urlsafe(32)), ("ca.crt", ca), ("namespace", namespace)):
        with open(os.path.join(mount, name), "w") as f:
            f.write(text)
    os.chmod(os.path.join(mount, "token"), 0o600)
    identity = {"user": f"system:serviceaccount:{namespace}:{account}", "extra": {
        "authentication.kubernetes.io/credential-id": [f"JTI={uuid.uuid4()}"],
        "authentication.kubernetes.io/node-name": [node],
        "authentication.kubernetes.io/pod-name": [pod],
        "authentication.kubernetes.io/pod-uid": [str(uuid.uuid4())]}}
    with open(os.path.join(directory, "accounts", f"{node}.json"), "w") as f:
        json.dump(identity, f, indent=1, sort_keys=True)
    return {**identity, "mount": mount}


def kubeconfig(server: str, ca: str, token: str) -> str:
    return (
        "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n"
        f"    server: {server}\n    certificate-authority: {ca}\n"
        "contexts:\n- name: lab\n  context:\n    cluster: lab\n    user: lab\n"
        f"current-context: lab\nusers:\n- name: lab\n  user:\n    token: {token}\n"
    )
