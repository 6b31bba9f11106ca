"""Escape battery, network: TCP outside the rules (fast open included),
listening without a bind, IPv6 and v4-mapped forms, other socket families,
and unix sockets outside the policy.

Every listener is the test's own, on loopback: a connection that reaches it
is damage, whatever the call returned.  Policies: ``readme`` (no network at
all) and ``netother`` (``net_allow=[":OTHER"]``, a port nobody listens on).
"""

from __future__ import annotations

import errno

import pytest

from escapes import (
    DENIED,
    Attempt,
    World,
    accepted_battery,
    assert_control,
    assert_held,
    attempt,
    ids,
    world_fixture,
)

pytestmark = pytest.mark.anyio

NET = {*DENIED, errno.EOPNOTSUPP}
SOCK = {*DENIED, errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT}
FAMILIES = (("v4", "4", "{port4}"), ("v6", "6", "{port6}"), ("v4mapped", "m", "{portm}"))


def tcp(policy: str) -> list[Attempt]:
    out = []
    for name, fam, port in FAMILIES:
        out.append(attempt(f"{policy}:connect-{name}", "connect", fam, port, held=NET,
                           policy=policy))
        for how in ("sendto", "sendmsg", "sendmmsg", "connect"):
            item = "1"  # issue 8, item 1: TCP fast open
            out.append(attempt(f"{policy}:fastopen-{how}-{name}", "fastopen", how, fam, port,
                               held=NET, policy=policy, item=item))
    for fam in ("4", "6"):
        out.append(attempt(f"{policy}:listen-autobind-v{fam}", "listen", fam, held=NET,
                           policy=policy, item="2"))
    return out


NETWORK = [
    *tcp("readme"),
    *tcp("netother"),
    attempt("bind-v4-any-port", "bind", "4", "0", held=NET),
    attempt("bind-v6-any-port", "bind", "6", "0", held=NET),
    attempt("netother:bind-allowed-connect-port", "bind", "4", "{other}", held=NET,
            policy="netother"),
    attempt("unix-pathname-connect", "unix-connect", "{sock}/outside.sock"),
    attempt("unix-abstract-connect", "unix-connect", "{abstract}"),
    attempt("unix:abstract-connect", "unix-connect", "{abstract}", policy="unix"),
]

# domain, type, protocol
SOCKETS = {
    "udp4": (2, 2, 0), "udp6": (10, 2, 0), "udplite": (2, 2, 136), "icmp-raw": (2, 3, 1),
    "icmp6-raw": (10, 3, 58), "sctp": (2, 1, 132), "sctp-seqpacket": (2, 5, 132),
    "mptcp": (2, 1, 262), "packet": (17, 3, 0), "packet-dgram": (17, 2, 0),
    "netlink-route": (16, 3, 0), "netlink-audit": (16, 3, 9), "netlink-uevent": (16, 2, 15),
    "netlink-sock-diag": (16, 2, 4), "alg": (38, 5, 0), "key": (15, 3, 2),
    "vsock": (40, 1, 0), "xdp": (44, 3, 0), "tipc": (30, 5, 0),
}
NETWORK += [attempt(f"socket-{name}", "socket", *map(str, args), held=SOCK)
            for name, args in SOCKETS.items()]

ACCEPTED = [
    (attempt("unix:pathname-connect", "unix-connect", "{sock}/outside.sock", held=None,
             policy="unix"),
     "Landlock up to ABI 7 does not govern connect() to a pathname unix socket: "
     "allow_unix_sockets=True reaches any socket whose path the child can name"),
]


world = world_fixture()


@pytest.fixture(scope="module")
def available(world: World) -> dict[str, int]:
    """Socket kinds this kernel offers unconfined (the rest are no test)."""
    return {a.id: world.unconfined(a)[0] for a in NETWORK if a.id.startswith("socket-")}


@pytest.mark.parametrize("a", NETWORK, ids=ids(NETWORK))
async def test_held(world: World, available: dict[str, int], a: Attempt, no_leaks: None) -> None:
    if available.get(a.id, 0) != 0:
        pytest.skip(f"{a.id} is not available here")
    await assert_held(world, a)


@pytest.mark.parametrize("a", NETWORK, ids=ids(NETWORK))
def test_control(world: World, available: dict[str, int], a: Attempt) -> None:
    if available.get(a.id, 0) != 0:
        pytest.skip(f"{a.id} is not available here")
    assert_control(world, a)


test_accepted, test_accepted_control = accepted_battery(ACCEPTED)


# With binding granted (net_allow_bind=[OTHER]) a bound socket listens.
@pytest.mark.parametrize("fam", ["4", "6"])
async def test_listen_on_an_allowed_port(world: World, fam: str, no_leaks: None) -> None:
    a = attempt(f"bind:bind-listen-v{fam}", "bind-listen", fam, "{other}", policy="bind")
    code, stdout, _ = await world.confined(a)
    assert code == 0, (a.id, code, stdout)
