"""Pinned names for callers without CAP_SYS_ADMIN (issue 10): the child
makes a user namespace of its own (one, with ``uid``/``gid`` and
``network``) and mounts the synthetic /etc/hosts there; a host refusing
user namespaces goes to ``on_unavailable`` as ``Subsystem.PINNED_NAMES``.

The callers run in a fresh interpreter (``test_combinations.drive``) as uid
65534, or as root without CAP_SYS_ADMIN.  The name is a test's own,
``api.pinned.test``: the driver's resolution is stubbed to answer 127.0.0.2
for it, which neither DNS nor the host's /etc/hosts knows, so the child can
resolve it from the pinned file only (its rules allow no DNS either); a
listener on 127.0.0.2 shows the child reaches exactly that address.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from test_combinations import (
    AS_NOBODY,
    AS_ROOT_WITHOUT_SYS_ADMIN,
    BIND,
    PY,
    WHO,
    _user_namespaces_for,
    drive,
    needs_nobody_userns,
    who,
)

from asyncsandlock import Sandbox, Subsystem
from asyncsandlock._enforcement import consequence, unenforced

from conftest import PYTHON, build_helper

BACKENDS = ["asyncio", "trio"]
NAME = "api.pinned.test"
PINNED = "127.0.0.2"
# The driver's resolution of NAME, stubbed (the rest resolve for real).
PRELUDE = f"""
import ipaddress as _ip
from asyncsandlock.handlers import net as _net
_real_lookup = _net._lookup
async def _lookup(name, on_unavailable):
    if name == {NAME!r}:
        return (_ip.ip_address({PINNED!r}),)
    return await _real_lookup(name, on_unavailable)
_net._lookup = _lookup
"""

# argv: NAME PORT [ADDRESS...]: the first line of /etc/hosts, what NAME
# resolves to (or the getaddrinfo error code), and a connect to NAME:PORT
# and to each ADDRESS:PORT (the peer's address, or the errno / EAI code).
PROBE = r"""
import json, socket, sys
name, port = sys.argv[1], int(sys.argv[2])
out = {}
with open("/etc/hosts", "rb") as f:
    out["first"] = f.readline().decode().strip()
try:
    found = socket.getaddrinfo(name, port, 0, socket.SOCK_STREAM)
    out["addrs"] = sorted({ai[4][0] for ai in found})
except socket.gaierror as e:
    out["addrs"] = e.args[0]
def connect(host):
    try:
        with socket.create_connection((host, port), timeout=5) as c:
            return c.getpeername()[0]
    except socket.gaierror as e:
        return e.args[0]
    except OSError as e:
        return e.errno
out["connect"] = [connect(host) for host in [name, *sys.argv[3:]]]
try:
    open("/etc/hosts", "ab").close()
    out["write"] = 0
except OSError as e:
    out["write"] = e.errno
print(json.dumps(out))
"""
# What an unknown name resolves to: EAI_AGAIN when the resolver tried DNS
# (which the rules refuse), EAI_NONAME on a host with no resolver configured.
UNKNOWN = {socket.EAI_AGAIN, socket.EAI_NONAME}
MARK = "# asyncsandlock: the names of net_allow, pinned to the addresses checked"


@pytest.fixture
def listener() -> Iterator[tuple[int, socket.socket]]:
    """A TCP listener on 127.0.0.2 (and its port, free on 127.0.0.1 too)."""
    with socket.socket() as sock:
        sock.bind((PINNED, 0))
        sock.listen()
        sock.setblocking(False)
        yield sock.getsockname()[1], sock


def accepted(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


def probed(run: dict[str, Any]) -> dict[str, Any]:
    assert run.get("rc") == 0, run
    found: dict[str, Any] = json.loads(run["stdout"])
    return found


@needs_nobody_userns
@pytest.mark.parametrize("backend", BACKENDS)
def test_unprivileged_caller_pins_names(backend: str,
                                        listener: tuple[int, socket.socket]) -> None:
    port, sock = listener
    rule = f"{NAME}:{port}"
    pinned, control, both, both_who = drive(AS_NOBODY, backend, [
        ({"net_allow": [rule]}, [PY, "-c", PROBE, NAME, str(port)]),
        # The control: no name in the rules, nothing pinned.
        ({"net_allow": [f"{PINNED}:{port}"]}, [PY, "-c", PROBE, NAME, str(port)]),
        ({"uid": 1234, "gid": 5, "network": "loopback", "net_allow": [rule]},
         [PY, "-c", PROBE, NAME, str(port)]),
        ({"uid": 1234, "gid": 5, "network": "loopback", "net_allow": [rule]}, [PY, "-c", WHO]),
    ], prelude=PRELUDE)
    got = probed(pinned)
    # The file is the child's own (its owner is the caller's uid, mapped to
    # itself), but its mount is read-only.
    assert got == {"first": MARK, "addrs": [PINNED], "connect": [PINNED],
                   "write": errno.EROFS}, got
    assert pinned["protections"]["PINNED_NAMES"] == "ACTIVE" and pinned["unenforced"] == {}
    assert accepted(sock) == 1
    # Unpinned, the child knows no such name (the host's file; DNS refused).
    got = probed(control)
    assert got["first"] != MARK and got["addrs"] in UNKNOWN, got
    assert control["protections"]["PINNED_NAMES"] == "NOT_REQUESTED"
    # With uid/gid and a network of its own: pinned in the same one user
    # namespace (its network is its own: nothing listens there).
    got = probed(both)
    assert got["first"] == MARK and got["addrs"] == [PINNED], got
    assert got["connect"] == [errno.ECONNREFUSED]
    ids = who(both_who)
    assert ids["ids"] == [1234] * 3 + [5] * 3 and ids["groups"] == [], ids
    assert ids["netowner"] == ids["user"] and ids["links"] == ["lo"], ids
    assert {both_who["protections"][sub] for sub in
            ("IDENTITY", "NETWORK_NAMESPACE", "PINNED_NAMES")} == {"ACTIVE"}


@needs_nobody_userns
@pytest.mark.parametrize("backend", BACKENDS)
def test_unprivileged_caller_keeps_its_ids(backend: str) -> None:
    """No uid asked: the child is the caller, as without pinned names."""
    pinned, plain = drive(AS_NOBODY, backend, [
        ({"net_allow": [f"{NAME}:80"]}, [PY, "-c", WHO]),
        ({"net_allow": [f"{PINNED}:80"]}, [PY, "-c", WHO]),
    ], prelude=PRELUDE)
    assert who(pinned)["ids"] == who(plain)["ids"] == [65534] * 6
    # The caller's network (other links come and go on a shared host).
    assert len(who(pinned)["links"]) > 1 and len(who(plain)["links"]) > 1


# Three runs of one Sandbox, then three at once: the first child's tmpfs is
# kept and cloned by the later children (each still sees the pinned file, and
# no run after the first leaves an fd behind).
AGAIN = r"""
import json, os, sys
import anyio
import asyncsandlock as asl
from asyncsandlock import _pinned
from asyncsandlock._plan import owner_of

async def main():
    sb = asl.Sandbox(fs_readable=asl.SYSTEM_READABLE, net_allow=["localhost:80"])
    heads, kept, after_first = [], [], set()
    for _ in range(3):
        heads.append((await sb.run(["head", "-1", "/etc/hosts"])).stdout.decode())
        held = _pinned._files.get(await owner_of(sb))
        kept.append(None if held is None else [held.fd, held.made_here])
        after_first = after_first or set(os.listdir("/proc/self/fd"))
    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(sb.run, ["true"])
    left = sorted(set(os.listdir("/proc/self/fd")) - after_first)
    print(json.dumps({"heads": heads, "kept": kept, "left": left}))

anyio.run(main, backend=sys.argv[1])
"""


@needs_nobody_userns
@pytest.mark.parametrize("backend", BACKENDS)
def test_later_runs_clone_the_first_childs_file(backend: str) -> None:
    done = subprocess.run([*AS_NOBODY, PYTHON, "-c", AGAIN, backend], capture_output=True,
                          text=True, timeout=120, cwd="/", stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.splitlines()[-1])
    assert got["heads"] == [MARK + "\n"] * 3, got
    assert got["kept"][0] == got["kept"][1] == got["kept"][2], got
    assert got["kept"][0][1] is False  # sent by the first child, not made here
    assert got["left"] == [], got


@pytest.fixture
def projects() -> Iterator[list[pathlib.Path]]:
    """Two directories uid 65534 owns, where it can reach them (pytest's
    tmp_path is root's, 0700)."""
    path = pathlib.Path(tempfile.mkdtemp(prefix="pinned-names-", dir="/tmp"))
    path.chmod(0o755)
    made = [path / "a", path / "b"]
    for project in made:
        project.mkdir()
        os.chown(project, 65534, 65534)
    yield made
    shutil.rmtree(path)


@needs_nobody_userns
@pytest.mark.parametrize("backend", BACKENDS)
def test_unprivileged_caller_pins_names_in_a_workspace(backend: str,
                                                       projects: list[pathlib.Path]) -> None:
    """The workspace's user and mount namespaces take the file too (control:
    an address rule, the host's file)."""
    script = ["sh", "-c", "head -1 /etc/hosts > seen"]
    named, plain = drive(AS_NOBODY, backend, [
        ({"net_allow": [f"{NAME}:80"], "workdir": str(projects[0])}, script),
        ({"net_allow": [f"{PINNED}:80"], "workdir": str(projects[1])}, script),
    ], prelude=PRELUDE)
    assert named["rc"] == 0 and named["protections"]["PINNED_NAMES"] == "ACTIVE", named
    assert plain["rc"] == 0, plain
    assert (projects[0] / "seen").read_text() == MARK + "\n"  # committed
    assert (projects[1] / "seen").read_text() != MARK + "\n"


@needs_nobody_userns
@pytest.mark.parametrize("backend", BACKENDS)
def test_user_namespaces_refused_go_to_on_unavailable(
        backend: str, listener: tuple[int, socket.socket]) -> None:
    """A host refusing user namespaces (a real refusal: unshare answers
    EPERM under an outer filter): strict refuses, naming PINNED_NAMES; a
    policy that lets it go runs with the name unpinned, and only that
    degrades: the guard still allows the checked address and nothing else."""
    port, sock = listener
    refuse = [build_helper("refuse"), "unshare=EPERM", "--", *AS_NOBODY]
    kw = {"net_allow": [f"{NAME}:{port}"]}
    cmd = [PY, "-c", PROBE, NAME, str(port), PINNED, "127.0.0.1"]
    strict, allowed = drive(refuse, backend, [
        (kw, cmd), ({**kw, "degrade": ["PINNED_NAMES"]}, cmd)], prelude=PRELUDE)
    assert strict == {"refused": "PINNED_NAMES", "errno": errno.EPERM}
    assert allowed["protections"]["PINNED_NAMES"] == "DEGRADED"
    assert allowed["unenforced"] == {"PINNED_NAMES": ["net_allow"]}, allowed
    got = probed(allowed)
    assert got["first"] != MARK and got["addrs"] in UNKNOWN, got
    assert got["connect"] == [got["addrs"], PINNED, errno.EACCES], got
    assert accepted(sock) == 1


@needs_nobody_userns
@pytest.mark.parametrize("backend", BACKENDS)
def test_refused_with_uid_and_network_each_asked(backend: str) -> None:
    """One user namespace for the three: its refusal is put to the policy
    for each in turn, pinned names first."""
    refuse = [build_helper("refuse"), "unshare=EPERM", "--", *AS_NOBODY]
    kw: dict[str, Any] = {"uid": 1234, "network": "loopback", "net_allow": [f"{NAME}:80"]}
    first, second, degraded = drive(refuse, backend, [
        (kw, [PY, "-c", WHO]),
        ({**kw, "degrade": ["PINNED_NAMES"]}, [PY, "-c", WHO]),
        ({**kw, "degrade": ["PINNED_NAMES", "NETWORK_NAMESPACE", "IDENTITY"]}, [PY, "-c", WHO]),
    ], prelude=PRELUDE)
    assert first == {"refused": "PINNED_NAMES", "errno": errno.EPERM}
    assert second == {"refused": "NETWORK_NAMESPACE", "errno": errno.EPERM}
    assert who(degraded)["ids"] == [65534] * 6
    assert degraded["unenforced"] == {"NETWORK_NAMESPACE": ["network"], "IDENTITY": ["uid", "gid"],
                                      "PINNED_NAMES": ["net_allow"]}, degraded


@pytest.mark.skipif(os.geteuid() != 0 or not _user_namespaces_for(AS_ROOT_WITHOUT_SYS_ADMIN),
                    reason="needs root, and a user namespace without CAP_SYS_ADMIN")
@pytest.mark.parametrize("backend", BACKENDS)
def test_root_without_sys_admin(backend: str, listener: tuple[int, socket.socket]) -> None:
    """setresuid first, then the user namespace (the policy's ids mapped to
    themselves, the network made with it); and a policy keeping
    CAP_NET_BIND_SERVICE on the caller's network, which a user namespace
    would take away, is put to on_unavailable (control: without a name,
    the low port binds)."""
    port, sock = listener
    rule = f"{NAME}:{port}"
    late, late_who, plain, keeps, allowed, control = drive(AS_ROOT_WITHOUT_SYS_ADMIN, backend, [
        ({"uid": 1234, "gid": 5, "net_allow": [rule]}, [PY, "-c", PROBE, NAME, str(port)]),
        ({"uid": 1234, "gid": 5, "network": "loopback", "net_allow": [rule]}, [PY, "-c", WHO]),
        ({"net_allow": [rule]}, [PY, "-c", WHO]),
        ({"net_allow": [rule], "net_allow_bind": [80]}, [PY, "-c", BIND, "80"]),
        ({"net_allow": [rule], "net_allow_bind": [80], "degrade": ["PINNED_NAMES"]},
         [PY, "-c", BIND, "80"]),
        ({"net_allow": [f"{PINNED}:{port}"], "net_allow_bind": [80]}, [PY, "-c", BIND, "80"]),
    ], prelude=PRELUDE)
    assert probed(late) == {"first": MARK, "addrs": [PINNED], "connect": [PINNED],
                            "write": errno.EROFS}
    assert accepted(sock) == 1
    ids = who(late_who)
    assert ids["ids"] == [1234] * 3 + [5] * 3 and ids["netowner"] == ids["user"], ids
    assert who(plain)["ids"] == [0] * 6
    assert keeps == {"refused": "PINNED_NAMES", "errno": errno.EPERM}
    assert allowed["stdout"].split() == ["bound"]
    assert allowed["unenforced"] == {"PINNED_NAMES": ["net_allow"]}
    assert control["stdout"].split() == ["bound"]


def test_the_report_names_net_allow_for_names_only() -> None:
    named = Sandbox(net_allow=[f"{NAME}:443", "10.0.0.0/8:5432"])
    assert unenforced(named, Subsystem.PINNED_NAMES) == ("net_allow",)
    assert unenforced(Sandbox(net_allow=["10.0.0.0/8:5432"]), Subsystem.PINNED_NAMES) == ()
    assert "guard still refuses every other address" in consequence(named,
                                                                    Subsystem.PINNED_NAMES)
