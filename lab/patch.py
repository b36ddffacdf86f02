"""Patch documents for the lab API server: JSON merge patch, strategic merge, JSON patch.

Strategic merge knows the patch strategies of the kinds served (k8s.io/api/core/v1): conditions and
addresses merge by `type`, ownerReferences by `uid`, a Service's ports by `port`, finalizers and
podCIDRs as sets; with the
directives the kubelet and kubectl send ($setElementOrder, $patch: delete/replace,
$deleteFromPrimitiveList, $retainKeys). Every other list is replaced, as upstream does.
"""
from __future__ import annotations

import copy
from typing import Any

from .kubestore import ApiError


def apply_patch(doc: dict, patch: Any, content_type: str) -> dict:
    if content_type == "application/json-patch+json":
        return _json_patch(doc, patch)
    if content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json",
                        "application/apply-patch+yaml"):
        if not isinstance(patch, dict):
            raise ApiError(400, "BadRequest", "a merge patch must be an object")
        if content_type == "application/strategic-merge-patch+json":
            return _strategic(doc, patch, ())
        return _merge(doc, patch)
    raise ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {content_type}")


def _merge(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue  # strategic-merge directives: not needed for Nodes in the lab
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge(out.get(key), value)
    return out


MERGE_KEYS = {("metadata", "ownerReferences"): "uid", ("status", "conditions"): "type",
              ("status", "addresses"): "type", ("spec", "ports"): "port"}  # spec.ports: a Service's
SET_LISTS = {("metadata", "finalizers"), ("spec", "podCIDRs")}


def _strategic(target: Any, patch: Any, path: tuple[str, ...]) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        here = (*path, key)
        if key.startswith("$"):
            continue
        if value is None:
            out.pop(key, None)
        elif isinstance(value, list) and here in MERGE_KEYS:
            out[key] = _merge_list(out.get(key) or [], value, MERGE_KEYS[here], patch.get(f"$setElementOrder/{key}"))
        elif isinstance(value, list) and here in SET_LISTS:
            out[key] = list(dict.fromkeys([*(out.get(key) or []), *value]))
        else:
            out[key] = _strategic(out.get(key), value, here)
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/") and isinstance(out.get(key.split("/", 1)[1]), list):
            name = key.split("/", 1)[1]
            out[name] = [v for v in out[name] if v not in value]
    if isinstance(patch.get("$retainKeys"), list):
        out = {k: v for k, v in out.items() if k in patch["$retainKeys"]}
    return out


def _merge_list(current: list, items: list, key: str, order: list | None) -> list:
    """Merge a list of maps by their merge key; `$patch: delete` removes one; order as asked."""
    out = {e.get(key): e for e in current if isinstance(e, dict)}
    for item in items:
        if not isinstance(item, dict):
            raise ApiError(422, "Invalid", f"a list merged by {key} holds only objects")
        k = item.get(key)
        if item.get("$patch") == "delete":
            out.pop(k, None)
        else:
            out[k] = _strategic(out.get(k), item, ())
    if order:
        rank = {e.get(key): i for i, e in enumerate(order) if isinstance(e, dict)}
        return sorted(out.values(), key=lambda e: rank.get(e.get(key), len(rank)))
    return list(out.values())


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, "Invalid", f"bad JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _json_patch(doc: dict, ops: Any) -> dict:
    if not isinstance(ops, list):
        raise ApiError(400, "BadRequest", "a JSON patch must be a list")
    for op in ops:
        try:
            doc = _one(doc, op)
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise ApiError(422, "Invalid", f"JSON patch {op!r} failed: {exc}") from None
    return doc


def _one(doc: dict, op: dict) -> dict:
    kind, path = op["op"], _pointer(op["path"])
    parent: Any = doc
    for part in path[:-1]:
        parent = parent[int(part)] if isinstance(parent, list) else parent[part]
    last = path[-1] if path else None
    if kind == "test":
        current = parent[int(last)] if isinstance(parent, list) else parent[last]
        if current != op["value"]:
            raise ValueError("test failed")
    elif kind in ("add", "replace"):
        if isinstance(parent, list):
            idx = len(parent) if last == "-" else int(last)
            if kind == "add":
                parent.insert(idx, op["value"])
            else:
                parent[idx] = op["value"]
        else:
            if kind == "replace" and last not in parent:
                raise KeyError(last)
            parent[last] = op["value"]
    elif kind == "remove":
        if isinstance(parent, list):
            parent.pop(int(last))
        else:
            del parent[last]
    else:
        raise ValueError(f"unsupported op {kind}")
    return doc
