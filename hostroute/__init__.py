"""`podbgp host-route`: a workstation's or VM host's routes to the Pod network, through the nodes.

The workstation's program, not the node's: `routes` is the pure core (route sets, checks,
summaries) and the OS backends (netlink on Linux, route(8) on macOS) with the router that adds
and removes exactly its own routes; `cli` is the click command and its Node following.
"""
