"""Which capabilities a child keeps, and whether it can empty its bounding set."""

from __future__ import annotations

import functools

CAP_SETPCAP = 8
CAP_NET_BIND_SERVICE = 10
_PRIVILEGED_PORTS = 1024


@functools.cache
def _status_mask(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1], 16)
    return 0


@functools.cache
def cap_last() -> int:
    """The highest capability number this kernel knows."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        return int(f.read())


def keep_mask(bind_ports: frozenset[int]) -> int:
    """Capabilities the child keeps: only CAP_NET_BIND_SERVICE, and only when
    the policy lets it bind a privileged port and we hold it ourselves."""
    wanted = 0
    if any(port < _PRIVILEGED_PORTS for port in bind_ports):
        wanted |= 1 << CAP_NET_BIND_SERVICE
    return wanted & _status_mask("CapPrm")


def can_drop_bounding() -> bool:
    """Emptying the bounding set needs CAP_SETPCAP; without it we are not
    root-equivalent and execve cannot grant capabilities anyway (no_new_privs)."""
    return bool(_status_mask("CapEff") & (1 << CAP_SETPCAP))
