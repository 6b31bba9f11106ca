"""Which capabilities a child keeps."""

from __future__ import annotations

import functools

CAP_NET_BIND_SERVICE = 10
_PRIVILEGED_PORTS = 1024


@functools.cache
def permitted_mask() -> int:
    """This process's permitted capabilities (``CapPrm``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapPrm:"):
                return int(line.split()[1], 16)
    return 0


def keep_mask(bind_ports: frozenset[int], *, own_namespace: bool = False) -> int:
    """Capabilities the child keeps: only CAP_NET_BIND_SERVICE, and only when
    the policy lets it bind a privileged port and it holds it: we do, or
    (``own_namespace``) the child is root of a user namespace of its own,
    which gives it every capability there."""
    wanted = 0
    if any(port < _PRIVILEGED_PORTS for port in bind_ports):
        wanted |= 1 << CAP_NET_BIND_SERVICE
    return wanted if own_namespace else wanted & permitted_mask()
