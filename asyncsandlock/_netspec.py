"""Parsing of ``net_allow`` and ``net_allow_bind`` entries."""

from __future__ import annotations

from dataclasses import dataclass

from ._exceptions import PolicyError
from ._validate import show


@dataclass(frozen=True, slots=True)
class NetRule:
    """One outbound rule: a protocol and the ports it opens (None: every port)."""

    protocol: str  # "tcp", "udp" or "any"
    ports: frozenset[int] | None


def parse_ports(field: str, text: str) -> frozenset[int]:
    """``"80"``, ``"80,443"`` or ``"8000-8010"`` (and mixes) as a set of ports."""
    ports: set[int] = set()
    for part in text.split(","):
        low, sep, high = part.strip().partition("-")
        try:
            first = int(low)
            last = int(high) if sep else first
        except ValueError:
            raise PolicyError(field,
                              f"{text!r} is not a port, a list or a range of ports") from None
        if not 0 < first <= last <= 65535:
            raise PolicyError(field, f"{text!r}: ports must lie in 1-65535")
        ports.update(range(first, last + 1))
    return frozenset(ports)


def parse_net_allow(spec: str) -> NetRule:
    """Parse one ``net_allow`` entry.

    Port rules (``:port``, ``*``, with an optional ``tcp://`` or ``udp://``
    scheme) are enforced by Landlock and seccomp.  Rules naming a host or an
    address need the network supervisor, which this version does not have,
    so they are refused rather than silently widened to "any host".
    """
    field = "net_allow"
    if not isinstance(spec, str) or not spec:
        raise PolicyError(field, f"{show(spec)} is not a rule string")
    protocol = "any"
    rest = spec
    scheme, sep, tail = spec.partition("://")
    if sep:
        if scheme not in ("tcp", "udp"):
            raise PolicyError(field, f"{spec!r}: unsupported scheme {scheme!r} "
                                     "(this version knows tcp:// and udp://)")
        protocol, rest = scheme, tail
    if rest == "*":
        return NetRule(protocol, None)
    host, colon, ports = rest.rpartition(":")
    if not colon:
        raise PolicyError(field, f"{spec!r}: expected ':port', 'host:port' or '*'")
    if host:
        raise PolicyError(field, f"{spec!r}: host and address rules are not supported yet; "
                                 "use ':port' or '*' (any host)")
    parsed = frozenset() if ports == "*" else parse_ports(field, ports)
    if protocol == "udp":
        raise PolicyError(field, f"{spec!r}: per-port UDP rules are not supported yet; "
                                 "use 'udp://*' to allow all UDP")
    # Without a scheme a port rule would open UDP too; per-port UDP cannot be
    # enforced without the network supervisor, so only TCP is opened.
    return NetRule("tcp", None if ports == "*" else parsed)
