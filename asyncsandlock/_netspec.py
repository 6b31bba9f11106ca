"""The network rules: parsing ``net_allow``, ``net_deny``, ``net_allow_bind``
and ``net_deny_bind``, and matching a destination against them.

Grammar of one ``net_allow`` entry (``net_deny`` is the same with literal
addresses only, and a bare address or CIDR meaning every port)::

    [scheme://]target
    scheme  = tcp | udp | icmp          (none: TCP and UDP)
    target  = * | *:* | host:ports | [v6]:ports | :ports | *:ports
    host    = a name, an IPv4 address or CIDR; IPv6 goes in brackets
    ports   = * | port[,port...] with port = N or N-M (1-65535)
    net_deny without a scheme closes TCP, UDP and ICMP to the address.
    icmp:   icmp://* | icmp://host (no ports; kernel ping sockets only)

An IPv4-mapped IPv6 destination (``::ffff:a.b.c.d``) is matched as the IPv4
address it carries, so a v4 rule (or a v4 ``net_deny``) also governs a dual
stack socket that reaches the same host.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from ._exceptions import PolicyError
from ._validate import show

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Protocols a rule may name; "any" is a rule without a scheme: TCP and UDP.
PROTOCOLS: Final = ("tcp", "udp", "icmp")
_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")


@dataclass(frozen=True, slots=True)
class NetRule:
    """One rule: a protocol, the destinations it names and their ports.

    ``ports`` None: every port (always None for ICMP).  ``host``: a name to be
    resolved (then ``nets`` is None until resolution fills :class:`NetPolicy`).
    ``nets`` None and ``host`` None: every address.
    """

    protocol: str  # "tcp", "udp", "icmp", "any" (TCP and UDP) or "all" (a net_deny: all three)
    ports: frozenset[int] | None
    host: str | None = None
    nets: tuple[Network, ...] | None = None

    @property
    def any_host(self) -> bool:
        """The rule names no host or address: ports are all it restricts."""
        return self.host is None and self.nets is None

    def covers(self, protocol: str) -> bool:
        """Whether the rule speaks of ``protocol`` ("tcp", "udp" or "icmp")."""
        return self.protocol in (protocol, "all") or (
            self.protocol == "any" and protocol != "icmp")


def _is_port(text: str) -> bool:
    """Decimal ASCII digits, few enough for int() (which takes "²" for no
    number, and refuses 4,300 digits and more)."""
    return text.isascii() and text.isdigit() and len(text) <= 6


def parse_ports(field: str, text: str, spec: str | None = None) -> frozenset[int]:
    """``"80"``, ``"80,443"`` or ``"8000-8010"`` (and mixes) as a set of ports."""
    ports: set[int] = set()
    where = f"{spec!r}: " if spec is not None and spec != text else ""
    for part in text.split(","):
        low, sep, high = part.strip().partition("-")
        if not _is_port(low) or (sep and not _is_port(high)):
            raise PolicyError(field, f"{where}{text!r} is not a port, a list or a range of ports")
        first = int(low)
        last = int(high) if sep else first
        if not 0 < first <= last <= 65535:
            raise PolicyError(field, f"{where}{text!r}: ports must lie in 1-65535, "
                                     "and a range go upwards")
        ports.update(range(first, last + 1))
    return frozenset(ports)


def _network(field: str, spec: str, text: str) -> Network | None:
    """``text`` as an address or a CIDR, or None if it is not one."""
    try:
        if "/" in text:
            return ipaddress.ip_network(text, strict=True)
        return ipaddress.ip_network(ipaddress.ip_address(text))
    except ValueError as exc:
        if "/" in text or text.replace(".", "").isdigit() or ":" in text:
            raise PolicyError(field, f"{spec!r}: {text!r} is not an address or a CIDR "
                                     f"({exc})") from None
        return None


def _hostname(field: str, spec: str, text: str) -> str:
    name = text.lower().removesuffix(".")
    if not name or len(name) > 253 or not all(_LABEL.fullmatch(label)
                                              for label in name.split(".")):
        raise PolicyError(field, f"{spec!r}: {text!r} is not a host name, an address or a CIDR")
    return name


def _target(field: str, spec: str, host: str, literal_only: bool
            ) -> tuple[str | None, tuple[Network, ...] | None]:
    """(name, nets) of a rule's host part ("" or "*": every address)."""
    if host in ("", "*"):
        if literal_only:
            raise PolicyError(field, f"{spec!r}: name an address or a CIDR "
                                     "(net_deny takes literal addresses only)")
        return None, None
    bracketed = host.startswith("[") and host.endswith("]")
    net = _network(field, spec, host[1:-1] if bracketed else host)
    if net is not None:
        if net.version == 6 and not bracketed:
            raise PolicyError(field, f"{spec!r}: write an IPv6 address in brackets, "
                                     f"as [{host}]:port")
        if net.version == 4 and bracketed:
            raise PolicyError(field, f"{spec!r}: brackets are for IPv6 addresses only")
        return None, (net,)
    if bracketed:
        raise PolicyError(field, f"{spec!r}: {host!r} is not an IPv6 address or CIDR")
    if literal_only:
        raise PolicyError(field, f"{spec!r}: {host!r} is a host name; net_deny takes "
                                 "literal addresses and CIDRs only (a name's addresses change)")
    return _hostname(field, spec, host), None


def parse_rule(spec: object, field: str = "net_allow") -> NetRule:
    """Parse one entry of ``field`` (``net_allow`` or ``net_deny``)."""
    if not isinstance(spec, str) or not spec:
        raise PolicyError(field, f"{show(spec)} is not a rule string")
    if spec != spec.strip() or any(ch.isspace() for ch in spec):
        raise PolicyError(field, f"{spec!r}: a rule has no spaces")
    deny = field == "net_deny"
    # Without a scheme: TCP and UDP; a net_deny entry closes ICMP as well.
    protocol = "all" if deny else "any"
    rest = spec
    scheme, sep, tail = spec.partition("://")
    if sep:
        if scheme not in PROTOCOLS:
            raise PolicyError(field, f"{spec!r}: unknown scheme {scheme!r} "
                                     "(tcp://, udp:// or icmp://)")
        protocol, rest = scheme, tail
        if not rest:
            raise PolicyError(field, f"{spec!r}: nothing after {scheme}://")
    if protocol == "icmp":
        if rest == "*" and not deny:
            return NetRule("icmp", None)
        host = rest
        if ":" in rest and not rest.startswith("["):
            try:  # no ports: a bare IPv6 address is unambiguous here
                ipaddress.ip_network(rest)
            except ValueError:
                raise PolicyError(field, f"{spec!r}: ICMP has no ports "
                                         "(icmp://host or icmp://*)") from None
            host = f"[{rest}]"
        name, nets = _target(field, spec, host, deny)
        return NetRule("icmp", None, name, nets)
    if rest in ("*", "*:*") and not deny:
        return NetRule(protocol, None)
    if rest.startswith("["):
        close = rest.find("]")
        if close < 0:
            raise PolicyError(field, f"{spec!r}: '[' without ']'")
        host, after = rest[:close + 1], rest[close + 1:]
        if deny and not after:
            colon, ports = ":", "*"
        elif not after.startswith(":"):
            raise PolicyError(field, f"{spec!r}: expected ':port' after {host!r}")
        else:
            colon, ports = ":", after[1:]
    else:
        host, colon, ports = rest.rpartition(":")
        if ":" in host:
            raise PolicyError(field, f"{spec!r}: write an IPv6 address in brackets, "
                                     "as [::1]:port")
        if not colon:
            if not deny:
                raise PolicyError(field, f"{spec!r}: expected 'host:port', ':port' or '*'")
            host, ports = rest, "*"
    if not ports:
        raise PolicyError(field, f"{spec!r}: no port after ':' (a port, a list, a range or *)")
    name, nets = _target(field, spec, host, deny)
    parsed = None if ports == "*" else parse_ports(field, ports, spec)
    return NetRule(protocol, parsed, name, nets)


def parse_net_allow(spec: object) -> NetRule:
    """Parse one ``net_allow`` entry."""
    return parse_rule(spec, "net_allow")


def parse_rules(field: str, specs: object) -> tuple[str, ...]:
    """Validate the sequence ``specs`` of ``field``; its entries as a tuple."""
    if isinstance(specs, (str, bytes)) or not isinstance(specs, Iterable):
        raise PolicyError(field, f"expected a sequence of rules, got {show(specs)}")
    out = tuple(specs)
    for spec in out:
        parse_rule(spec, field)
    return out


def parse_bind(field: str, items: object) -> frozenset[int] | None:
    """The TCP ports ``items`` lists; None for ``"*"`` (every port).  0
    stands for an ephemeral port the kernel picks (``bind`` to port 0)."""
    if isinstance(items, (str, bytes, int)) or not isinstance(items, Iterable):
        raise PolicyError(field, f"expected a sequence of ports, got {show(items)}")
    ports: set[int] = set()
    every = False
    for item in items:
        if isinstance(item, bool):
            raise PolicyError(field, f"{show(item)} is not a port")
        if isinstance(item, int):
            if not 0 <= item <= 65535:  # and str() of a huge int is a ValueError
                raise PolicyError(field, f"{show(item)}: ports must lie in 0-65535")
            ports.add(item)
        elif item in ("*", "0"):
            every = every or item == "*"
            ports.add(0)
        elif isinstance(item, str):
            ports |= parse_ports(field, item)
        else:
            raise PolicyError(field, f"{show(item)} is not a port")
    return None if every else frozenset(ports)


def bind_ports(allow: Iterable[object], deny: Iterable[object]) -> frozenset[int] | None:
    """The TCP ports the child may bind: ``net_allow_bind`` less
    ``net_deny_bind``; None: every port."""
    allowed = parse_bind("net_allow_bind", allow)
    denied = parse_bind("net_deny_bind", deny)
    if denied is None:
        return frozenset()
    if not denied:
        return allowed
    if allowed is None:
        allowed = frozenset(range(65536))
    return allowed - denied


def needs_guard(allow: Iterable[NetRule], deny: Iterable[NetRule]) -> tuple[bool, bool]:
    """(trap connect, trap sends with an address): what Landlock's TCP port
    rules and the filter's socket checks cannot express alone."""
    allow, deny = tuple(allow), tuple(deny)
    if deny:
        return True, any(r.protocol != "tcp" for r in allow)
    udp_everywhere = any(r.covers("udp") and r.any_host and r.ports is None for r in allow)
    icmp_everywhere = any(r.protocol == "icmp" and r.any_host for r in allow)
    udp = any(r.covers("udp") for r in allow)
    icmp = any(r.protocol == "icmp" for r in allow)
    sends = (udp and not udp_everywhere) or (icmp and not icmp_everywhere)
    connect = sends or any(r.covers("tcp") and not r.any_host for r in allow)
    return connect, sends


def _unmapped(ip: Address) -> Address:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class NetPolicy:
    """The rules of a policy, names resolved: what the network guard asks."""

    __slots__ = ("allow", "deny")

    def __init__(self, allow: Iterable[NetRule], deny: Iterable[NetRule],
                 resolved: Mapping[str, tuple[Address, ...]] | None = None) -> None:
        rules = []
        for rule in allow:
            if rule.host is not None:
                addrs = (resolved or {}).get(rule.host, ())
                nets = tuple(ipaddress.ip_network(_unmapped(a)) for a in addrs)
                rules.append(NetRule(rule.protocol, rule.ports, rule.host, nets))
            else:
                rules.append(rule)
        self.allow: tuple[NetRule, ...] = tuple(rules)
        self.deny: tuple[NetRule, ...] = tuple(deny)

    @staticmethod
    def _match(rule: NetRule, protocol: str, ip: Address, port: int) -> bool:
        if not rule.covers(protocol):
            return False
        if protocol != "icmp" and rule.ports is not None and port not in rule.ports:
            return False
        if rule.nets is None:
            return rule.host is None
        return any(ip.version == net.version and ip in net for net in rule.nets)

    def allows(self, protocol: str, ip: Address, port: int) -> bool:
        """Whether the child may reach ``ip``:``port`` over ``protocol``
        ("tcp", "udp" or "icmp").  A deny rule wins over every allow rule."""
        ip = _unmapped(ip)
        if any(self._match(rule, protocol, ip, port) for rule in self.deny):
            return False
        return any(self._match(rule, protocol, ip, port) for rule in self.allow)

    def names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r.host for r in self.allow if r.host is not None))


def _ports_field(field: str, items: object) -> tuple[int | str, ...]:
    if isinstance(items, (str, bytes, int)) or not isinstance(items, Iterable):
        raise PolicyError(field, f"expected a sequence of ports, got {show(items)}")
    out = tuple(items)
    parse_bind(field, out)
    return out


def check_network(allow: object, allow_bind: object, deny: object, deny_bind: object
                  ) -> tuple[tuple[str, ...], tuple[int | str, ...], tuple[str, ...],
                             tuple[int | str, ...]]:
    """Validate the four network fields of a Sandbox; them as tuples."""
    allow_t, allow_bind_t = parse_rules("net_allow", allow), _ports_field("net_allow_bind",
                                                                          allow_bind)
    deny_t, deny_bind_t = parse_rules("net_deny", deny), _ports_field("net_deny_bind", deny_bind)
    if deny_bind_t and parse_bind("net_allow_bind", allow_bind_t) is None:
        # Landlock knows bind rules per port: every port but some would be
        # 65,535 rules, seconds to build.
        raise PolicyError("net_deny_bind", f"{show(deny_bind_t)} with net_allow_bind='*': "
                                           "list the ports (or ranges) to allow instead")
    return allow_t, allow_bind_t, deny_t, deny_bind_t
