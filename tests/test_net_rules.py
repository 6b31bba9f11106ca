"""The network rule grammar (``_netspec.py``): each form parses to what it
says, matching follows the rule, deny wins, and every bad rule is a
PolicyError naming the field and the rule.  Property tests with hypothesis."""

from __future__ import annotations

import ipaddress

import pytest
from bpf_machine import ALLOW, EAFNOSUPPORT, EPERM, USER_NOTIF, Filter
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncsandlock import PolicyError, Sandbox
from asyncsandlock._netspec import NetPolicy, NetRule, bind_ports, needs_guard, parse_rule
from asyncsandlock.handlers import NetGuard, SendGuard, builtin_handlers

V4 = st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1))
V6 = st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1))
PORT = st.integers(1, 65535)
PROTO = st.sampled_from(["tcp", "udp", "icmp"])


@pytest.mark.parametrize(("spec", "rule"), [
    ("*", NetRule("any", None)),
    ("*:*", NetRule("any", None)),
    (":53", NetRule("any", frozenset({53}))),
    ("*:53", NetRule("any", frozenset({53}))),
    ("tcp://:80-82", NetRule("tcp", frozenset({80, 81, 82}))),
    ("udp://*", NetRule("udp", None)),
    ("github.com:22,443", NetRule("any", frozenset({22, 443}), "github.com")),
    ("API.Example.COM.:443", NetRule("any", frozenset({443}), "api.example.com")),
    ("10.0.0.0/8:5432", NetRule("any", frozenset({5432}), None,
                                (ipaddress.ip_network("10.0.0.0/8"),))),
    ("[::1]:8080", NetRule("any", frozenset({8080}), None, (ipaddress.ip_network("::1"),))),
    ("udp://[fd00::/8]:*", NetRule("udp", None, None, (ipaddress.ip_network("fd00::/8"),))),
    ("icmp://*", NetRule("icmp", None)),
    ("icmp://127.0.0.1", NetRule("icmp", None, None, (ipaddress.ip_network("127.0.0.1"),))),
    ("icmp://::1", NetRule("icmp", None, None, (ipaddress.ip_network("::1"),))),
    ("icmp://localhost", NetRule("icmp", None, "localhost")),
])
def test_each_form(spec: str, rule: NetRule) -> None:
    assert parse_rule(spec) == rule


@pytest.mark.parametrize(("spec", "rule"), [
    ("10.0.0.0/8", NetRule("all", None, None, (ipaddress.ip_network("10.0.0.0/8"),))),
    ("[::1]", NetRule("all", None, None, (ipaddress.ip_network("::1"),))),
    ("udp://192.0.2.1:53", NetRule("udp", frozenset({53}), None,
                                   (ipaddress.ip_network("192.0.2.1"),))),
])
def test_deny_forms(spec: str, rule: NetRule) -> None:
    assert parse_rule(spec, "net_deny") == rule


@pytest.mark.parametrize(("field", "spec", "what"), [
    ("net_allow", "example.com", "host:port"),
    ("net_allow", "::1:80", "brackets"),
    ("net_allow", "[1.2.3.4]:80", "IPv6"),
    ("net_allow", "10.0.0.1/8:80", "host bits"),
    ("net_allow", ":0", "1-65535"),
    ("net_allow", ":90-80", "upwards"),
    ("net_allow", "ftp://:21", "scheme"),
    ("net_allow", "icmp://host:80", "no ports"),
    ("net_allow", "a..b:80", "host name"),
    ("net_allow", "a:", "no port"),
    ("net_allow", "[::1:80", "']'"),
    ("net_allow", " :80", "spaces"),
    ("net_allow", ":\u00b2", "not a port"),
    ("net_allow", ":" + "1" * 5000, "not a port"),
    ("net_allow", ":0080000", "not a port"),
    ("net_deny", "example.com", "literal"),
    ("net_deny", "*:80", "literal"),
])
def test_bad_rules_say_what_is_wrong(field: str, spec: str, what: str) -> None:
    with pytest.raises(PolicyError) as info:
        Sandbox(**{field: [spec]})
    assert info.value.field == field
    assert repr(spec) in str(info.value) and what in str(info.value)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30))
def test_any_text_parses_or_names_field_and_rule(text: str) -> None:
    for field in ("net_allow", "net_deny"):
        try:
            parse_rule(text, field)
        except PolicyError as exc:
            assert exc.field == field
            assert repr(text) in str(exc) or not text


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["", "tcp://", "udp://"]), st.one_of(V4, V6),
       st.integers(0, 32), st.lists(PORT, min_size=1, max_size=4))
def test_literal_rules_round_trip(scheme: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
                                  prefix: int, ports: list[int]) -> None:
    net = ipaddress.ip_network(f"{ip}/{prefix if ip.version == 4 else prefix * 4}", strict=False)
    host = str(net) if net.version == 4 else f"[{net}]"
    rule = parse_rule(f"{scheme}{host}:{','.join(map(str, ports))}")
    assert rule == NetRule(scheme[:-3] or "any", frozenset(ports), None, (net,))


@settings(max_examples=300, deadline=None)
@given(rproto=st.sampled_from(["any", "tcp", "udp", "icmp"]), base=V4, prefix=st.integers(8, 32),
       ports=st.one_of(st.none(), st.frozensets(PORT, min_size=1, max_size=3)),
       proto=PROTO, ip=V4, port=PORT)
def test_matching_follows_the_rule(*, rproto: str, base: ipaddress.IPv4Address, prefix: int,
                                   ports: frozenset[int] | None, proto: str,
                                   ip: ipaddress.IPv4Address, port: int) -> None:
    if rproto == "icmp":
        ports = None
    net = ipaddress.ip_network(f"{base}/{prefix}", strict=False)
    rule = NetRule(rproto, ports, None, (net,))
    expected = (rproto == proto or (rproto == "any" and proto != "icmp")) \
        and (ports is None or proto == "icmp" or port in ports) and ip in net
    policy = NetPolicy([rule], [])
    assert policy.allows(proto, ip, port) == expected
    # A v4-mapped IPv6 destination is the same host.
    mapped = ipaddress.IPv6Address(f"::ffff:{ip}")
    assert policy.allows(proto, mapped, port) == expected


@settings(max_examples=200, deadline=None)
@given(V4, PORT, PROTO, st.integers(8, 32))
def test_deny_wins(ip: ipaddress.IPv4Address, port: int, proto: str, prefix: int) -> None:
    deny = parse_rule(f"{ipaddress.ip_network(f'{ip}/{prefix}', strict=False)}", "net_deny")
    allow = [parse_rule("*"), parse_rule("icmp://*"), parse_rule(f"{ip}:{port}")]
    assert NetPolicy(allow, []).allows(proto, ip, port)
    assert not NetPolicy(allow, [deny]).allows(proto, ip, port)
    assert not NetPolicy(allow, [deny]).allows(proto, ipaddress.IPv6Address(f"::ffff:{ip}"),
                                               port)


def test_names_open_nothing_until_resolved() -> None:
    rule = parse_rule("localhost:80")
    assert not NetPolicy([rule], []).allows("tcp", ipaddress.ip_address("127.0.0.1"), 80)
    resolved = NetPolicy([rule], [], {"localhost": (ipaddress.ip_address("127.0.0.1"),)})
    assert resolved.allows("tcp", ipaddress.ip_address("127.0.0.1"), 80)
    assert not resolved.allows("tcp", ipaddress.ip_address("127.0.0.1"), 81)
    assert not resolved.allows("tcp", ipaddress.ip_address("127.0.0.2"), 80)


def test_bind_ports() -> None:
    assert bind_ports([8080, "9000-9001"], []) == {8080, 9000, 9001}
    assert bind_ports(["*"], []) is None
    assert bind_ports([0], []) == {0}
    assert bind_ports(["*"], [22]) == frozenset(range(65536)) - {22}
    with pytest.raises(PolicyError, match="net_deny_bind"):
        Sandbox(net_allow_bind=["*"], net_deny_bind=[22])
    assert bind_ports([80, 81], ["80"]) == {81}
    assert bind_ports([80], ["*"]) == frozenset()
    for bad in ([-1], [65536], ["x"], [True], [1.0]):
        with pytest.raises(PolicyError, match="net_deny_bind"):
            Sandbox(net_deny_bind=bad)


@pytest.mark.parametrize(("allow", "deny", "expected"), [
    ([], [], (False, False)),
    (["*"], [], (False, False)),
    (["tcp://:443", "tcp://:80"], [], (False, False)),
    ([":443"], [], (True, True)),  # UDP port 443 only: Landlock cannot say it
    (["udp://*", "icmp://*"], [], (False, False)),
    (["tcp://127.0.0.1:80"], [], (True, False)),
    ([":53"], [], (True, True)),  # UDP port 53 only: Landlock cannot say it
    (["icmp://127.0.0.1"], [], (True, True)),
    (["tcp://*"], ["10.0.0.0/8"], (True, False)),
    (["*"], ["10.0.0.0/8"], (True, True)),
])
def test_when_the_guard_is_needed(allow: list[str], deny: list[str],
                                  expected: tuple[bool, bool]) -> None:
    rules = [parse_rule(r) for r in allow]
    denied = [parse_rule(r, "net_deny") for r in deny]
    assert needs_guard(rules, denied) == expected
    kinds = {type(h) for h in builtin_handlers(Sandbox(net_allow=allow, net_deny=deny))}
    assert (NetGuard in kinds, SendGuard in kinds) == expected


# -- what the filter sends to the guard (the BPF program, run in tests/bpf_machine.py)


def _filter(policy: Sandbox, supervised: bool = True) -> Filter:
    import anyio

    from asyncsandlock._plan import compile_plan

    plan = anyio.run(compile_plan, policy)
    notify = frozenset(n for h in builtin_handlers(policy) for n in h.syscalls) \
        if supervised else frozenset()
    return Filter.build(plan.filter_spec(notify))


_AF_INET, _AF_INET6, _DGRAM, _RAW = 2, 10, 2, 3


def test_the_filter_traps_connect_and_addressed_sends_only() -> None:
    f = _filter(Sandbox(net_allow=["127.0.0.1:80"]))
    assert f.run("connect", 3, 0x1000, 16) == USER_NOTIF
    assert f.run("sendto", 3, 0x1000, 5, 0, 0, 0) == ALLOW  # no address: data, not trapped
    assert f.run("sendto", 3, 0x1000, 5, 0, 0x2000, 16) == USER_NOTIF
    assert f.run("sendto", 3, 0x1000, 5, 0, 1 << 32, 16) == USER_NOTIF  # high word only
    assert f.run("sendmsg", 3, 0x1000, 0) == USER_NOTIF
    assert f.run("sendmmsg", 3, 0x1000, 2, 0) == USER_NOTIF
    for name in ("write", "read", "recvfrom", "recvmsg", "writev"):
        assert f.run(name, 3, 0x1000, 5) == ALLOW, name
    assert f.run("socket", _AF_INET, _DGRAM, 0) == ALLOW
    assert f.run("socket", _AF_INET, _DGRAM, 1) == EAFNOSUPPORT  # no icmp:// rule
    assert f.run("socket", _AF_INET, _RAW, 1) == EAFNOSUPPORT


def test_tcp_host_rules_leave_sends_alone() -> None:
    f = _filter(Sandbox(net_allow=["tcp://127.0.0.1:80"]))
    assert f.run("connect", 3, 0x1000, 16) == USER_NOTIF
    assert f.run("sendto", 3, 0x1000, 5, 0, 0x2000, 16) == ALLOW
    assert f.run("sendmsg", 3, 0x1000, 0) == ALLOW
    assert f.run("socket", _AF_INET, _DGRAM, 0) == EAFNOSUPPORT


def test_port_rules_trap_nothing() -> None:
    f = _filter(Sandbox(net_allow=["tcp://:80", "udp://*"]))
    assert f.run("connect", 3, 0x1000, 16) == ALLOW
    assert f.run("sendto", 3, 0x1000, 5, 0, 0x2000, 16) == ALLOW


def test_ping_sockets_by_icmp_rule_raw_never() -> None:
    f = _filter(Sandbox(net_allow=["icmp://*"]))
    assert f.run("socket", _AF_INET, _DGRAM, 1) == ALLOW
    assert f.run("socket", _AF_INET6, _DGRAM, 58) == ALLOW
    assert f.run("socket", _AF_INET, _RAW, 1) == EAFNOSUPPORT
    assert f.run("socket", _AF_INET, _DGRAM, 0) == EAFNOSUPPORT  # no UDP rule


def test_without_the_supervisor_the_guarded_calls_fail_closed() -> None:
    f = _filter(Sandbox(net_allow=["127.0.0.1:80"]), supervised=False)
    assert f.run("connect", 3, 0x1000, 16) == EPERM
    assert f.run("sendto", 3, 0x1000, 5, 0, 0x2000, 16) == EPERM
    assert f.run("sendto", 3, 0x1000, 5, 0, 0, 0) == ALLOW
