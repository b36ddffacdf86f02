"""How the lab API server lists and watches: list options and their validation as the real API
server answers them, continue tokens, the lines a watch sends, label and field selectors."""
from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass

from .kinds import KINDS, ApiError, dumps
from .kubestore import Entry

# -- list options: parsing and the real API server's validation -----------------------------------

@dataclass(slots=True)
class ListOptions:
    watch: bool = False
    resource_version: str = ""
    match: str = ""  # resourceVersionMatch
    send_initial: bool | None = None  # sendInitialEvents (None: not given)
    bookmarks: bool = False
    limit: int = 0
    cont: str = ""
    labels: str | None = None
    fields: str | None = None
    timeout: float | None = None


def _bool(name: str, value: str) -> bool:
    """strconv.ParseBool, as the API server decodes boolean query parameters."""
    if value in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if value in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise ApiError(400, "BadRequest", f'strconv.ParseBool: parsing "{value}": invalid syntax ({name})')


def parse_list_options(q: dict[str, str], watch_list: bool) -> ListOptions:
    """The query of a list or watch, defaulted as the API server does (SetListOptionsDefaults)."""
    try:
        opts = ListOptions(watch=_bool("watch", q["watch"]) if "watch" in q else False,
                           resource_version=q.get("resourceVersion", ""), match=q.get(RVM, ""),
                           send_initial=_bool(SIE, q[SIE]) if SIE in q else None,
                           bookmarks=_bool("allowWatchBookmarks", q.get("allowWatchBookmarks", "false")),
                           limit=int(q.get("limit") or 0), cont=q.get("continue", ""),
                           labels=q.get("labelSelector"), fields=q.get("fieldSelector"),
                           timeout=float(q["timeoutSeconds"]) if q.get("timeoutSeconds") else None)
    except ValueError as exc:
        raise ApiError(400, "BadRequest", str(exc)) from None
    # with the WatchList gate on, a watch from "" or "0" is a watch-list (its bookmark, if asked
    # for, carries the initial-events-end annotation)
    if watch_list and opts.watch and opts.send_initial is None and not opts.match \
            and opts.resource_version in ("", "0"):
        opts.send_initial, opts.match = True, "NotOlderThan"
    errs = validate_watch(opts, watch_list) if opts.watch else validate_list(opts)
    if errs:
        raise invalid_list_options(errs)
    return opts


def _forbidden(field: str, detail: str) -> tuple[str, str, str]:
    return field, "FieldValueForbidden", f"Forbidden: {detail}"


def _not_supported(field: str, value: str, supported: list[str]) -> tuple[str, str, str]:
    values = ", ".join(f'"{v}"' for v in supported)
    return field, "FieldValueNotSupported", f'Unsupported value: "{value}": supported values: {values}'


RVM, SIE = "resourceVersionMatch", "sendInitialEvents"


def validate_list(o: ListOptions) -> list[tuple[str, str, str]]:
    """ValidateListOptions for a list (k8s.io/apimachinery internalversion/validation)."""
    errs = []
    if o.match:
        if not o.resource_version:
            errs.append(_forbidden(RVM, f"{RVM} is forbidden unless resourceVersion is provided"))
        if o.cont:
            errs.append(_forbidden(RVM, f"{RVM} is forbidden when continue is provided"))
        if o.match not in ("Exact", "NotOlderThan"):
            errs.append(_not_supported(RVM, o.match, ["Exact", "NotOlderThan", ""]))
        if o.match == "Exact" and o.resource_version == "0":
            errs.append(_forbidden(RVM, f'{RVM} "exact" is forbidden for resourceVersion "0"'))
    if o.send_initial is not None:
        errs.append(_forbidden(SIE, f"{SIE} is forbidden for list"))
    return errs


def validate_watch(o: ListOptions, watch_list: bool) -> list[tuple[str, str, str]]:
    """validateWatchOptions; watch_list is the WatchList feature gate."""
    errs = []
    if o.send_initial is not None:
        if o.match != "NotOlderThan":
            errs.append(_forbidden(RVM, f"{SIE} requires setting {RVM} to NotOlderThan"))
        if not watch_list:
            errs.append(_forbidden(SIE, f"{SIE} is forbidden for watch unless the WatchList feature gate is enabled"))
    if o.match:
        if o.send_initial is None:
            errs.append(_forbidden(RVM, f"{RVM} is forbidden for watch unless {SIE} is provided"))
        if o.match != "NotOlderThan":
            errs.append(_not_supported(RVM, o.match, ["NotOlderThan"]))
        if o.cont:
            errs.append(_forbidden(RVM, f"{RVM} is forbidden when continue is provided"))
    return errs


def invalid_list_options(errs: list[tuple[str, str, str]]) -> ApiError:
    """errors.NewInvalid(meta.k8s.io/ListOptions, "", errs): 422 with one cause per field error."""
    texts = [f"{field}: {body}" for field, _, body in dict.fromkeys(errs)]
    agg = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    return ApiError(422, "Invalid", f'ListOptions.meta.k8s.io "" is invalid: {agg}',
                    {"group": "meta.k8s.io", "kind": "ListOptions",
                     "causes": [{"reason": r, "message": body, "field": f} for f, r, body in errs]})


# -- continue tokens (the API server's: base64url of {"v","rv","start"}) ----------------------------

def encode_continue(rv: int, start: str) -> str:
    data = dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": start})
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def decode_continue(token: str) -> tuple[int, str]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if data.get("v") != "meta.k8s.io/v1":
            raise ValueError("unknown version")
        rv, start = int(data["rv"]), str(data["start"])
        if rv == 0 or rv < -1:
            raise ValueError("incorrect encoded start resourceVersion (version meta.k8s.io/v1)")
        return rv, start
    except (ValueError, KeyError, TypeError, binascii.Error, AttributeError) as exc:
        raise ApiError(400, "BadRequest", f"continue key is not valid: {exc}") from None


CONTINUE_EXPIRED = (
    "The provided continue parameter is too old to display a consistent list result. You can start a new "
    "list without the continue parameter, or use the continue token in this response to retrieve the "
    "remainder of the results. Continuing with the provided token results in an inconsistent list - objects "
    "that were created, modified, or deleted between the time the first chunk was returned and now may show "
    "up in the list.")


# -- what a watch sends --------------------------------------------------------------------------

EMPTY_NODE_STATUS = {"daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
                     "nodeInfo": {k: "" for k in ("machineID", "systemUUID", "bootID", "kernelVersion", "osImage",
                                                  "containerRuntimeVersion", "kubeletVersion", "kubeProxyVersion",
                                                  "operatingSystem", "architecture")}}
# what an empty object of each kind serializes to in Go (the body of a BOOKMARK)
EMPTY_BODY = {"nodes": {"spec": {}, "status": EMPTY_NODE_STATUS},
              "services": {"spec": {}, "status": {"loadBalancer": {}}},
              "endpointslices": {"addressType": "", "endpoints": None},
              "leases": {"spec": {}},
              "events": {"involvedObject": {}, "reportingComponent": "", "reportingInstance": "",
                         "source": {}, "firstTimestamp": None, "lastTimestamp": None, "eventTime": None},
              "events.events.k8s.io": {"eventTime": None, "reportingController": "", "reportingInstance": ""}}


def bookmark(rv: int, initial_events_end: bool = False, res: str = "nodes") -> bytes:
    """A BOOKMARK event as kube-apiserver 1.32 writes it: an empty object of the kind carrying the version."""
    meta: dict = {"resourceVersion": str(rv), "creationTimestamp": None}
    if initial_events_end:
        meta["annotations"] = {"k8s.io/initial-events-end": "true"}
    kind = KINDS[res]
    obj = {"kind": kind.kind, "apiVersion": kind.api_version, "metadata": meta, **EMPTY_BODY[res]}
    return b'{"type":"BOOKMARK","object":%s}\n' % dumps(obj)


def event_line(kind: str, raw: bytes) -> bytes:
    return b'{"type":"%s","object":%s}\n' % (kind.encode(), raw)


SELECTOR_TERMS = re.compile(r",(?![^()]*\))")  # the commas between terms, not those inside "in (a,b)"
SET_TERM = re.compile(r"^(!?)\s*([^\s!=]+)\s+(in|notin)\s*\((.*)\)$")


def _field_getter(e: Entry):
    """A field selector's view of an object: name and namespace from the key, other fields parsed."""
    def get(path: str) -> str | None:
        if path == "metadata.name":
            return e.name.rpartition("/")[2]
        if path == "metadata.namespace":
            return e.name.rpartition("/")[0]
        value = json.loads(e.raw)
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, bool):
            return "true" if value else "false"
        return None if value is None else str(value)
    return get


def matches(e: Entry, labels: str | None, fields: str | None) -> bool:
    for sel, getter in ((labels, e.labels.get), (fields, _field_getter(e) if fields else None)):
        if not sel:
            continue
        for term in SELECTOR_TERMS.split(sel):
            term = term.strip()
            in_set = SET_TERM.match(term)
            if in_set:
                values = {v.strip() for v in in_set.group(4).split(",")}
                if (getter(in_set.group(2)) in values) != (in_set.group(3) == "in"):
                    return False
            elif "!=" in term:
                k, v = term.split("!=", 1)
                if getter(k.strip()) == v.strip():
                    return False
            elif "=" in term:
                k, v = term.replace("==", "=").split("=", 1)
                if getter(k.strip()) != v.strip():
                    return False
            elif term.startswith("!"):
                if getter(term[1:].strip()) is not None:
                    return False
            elif term and getter(term) is None:
                return False
    return True
