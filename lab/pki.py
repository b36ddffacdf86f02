"""The lab's certificate authority and service-account credentials, made with openssl(1).

One CA per lab, a serving certificate for the lab API server (127.0.0.1, ::1, localhost and the
names of the in-cluster Service), an administrator's token (the kubeconfigs: kubectl, tests) and
the files a Pod finds in its service-account mount: `token` (a token of its own, which the lab
API allows only what the service account's RBAC grants), `ca.crt` and `namespace`. Nothing here
touches the host's own copies.
"""
from __future__ import annotations

import os
import secrets
import subprocess

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


def kubeconfig(server: str, ca: str, token: str) -> str:
    return (
        "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n"
        f"    server: {server}\n    certificate-authority: {ca}\n"
        "contexts:\n- name: lab\n  context:\n    cluster: lab\n    user: lab\n"
        f"current-context: lab\nusers:\n- name: lab\n  user:\n    token: {token}\n"
    )
