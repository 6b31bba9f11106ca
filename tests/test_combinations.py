"""Policy fields together: ``uid``/``gid`` with ``network``, ``fs_denied``
with ``uid``, ``network`` with ``max_processes`` and with the ``net_allow``
rules (docs/network-namespaces.md, "With other fields").

Each combination is run from a root caller (in this process, both
backends), and where it takes another path in the child, from the callers
that take it, in a fresh interpreter: uid 65534 (one user namespace for the
identity and the network), and root without CAP_SYS_ADMIN (setresuid first,
then a user namespace for the network).  Escape tests pair with a control:
the same attempt with the permission granted, or without the other field.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from asyncsandlock import SYSTEM_READABLE, Protection, Sandbox, Subsystem

from conftest import PYTHON, build_helper

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs a root caller")
BACKENDS = ["asyncio", "trio"]
PY = "/usr/bin/python3"  # readable by every caller here (the venv's may not be)
READABLE = [*SYSTEM_READABLE, "/proc"]

# What the child is, and where its network comes from: its ids, its user
# namespace, the user namespace owning its network namespace (the same one
# when a single namespace serves both; in a nested pair the owner is out of
# the child's reach: EPERM), and its links.
WHO = r"""
import fcntl, json, os
NS_GET_USERNS = 0xb701
user = os.open("/proc/self/ns/user", os.O_RDONLY)
net = os.open("/proc/self/ns/net", os.O_RDONLY)
try:
    owner = os.fstat(fcntl.ioctl(net, NS_GET_USERNS)).st_ino
except OSError as e:
    owner = -e.errno
with open("/proc/self/net/dev") as f:
    links = [line.split(":")[0].strip() for line in f.readlines()[2:]]
print(json.dumps({"ids": [*os.getresuid(), *os.getresgid()], "groups": os.getgroups(),
                  "user": os.fstat(user).st_ino, "netowner": owner, "links": links}))
"""

# Binds TCP port argv[1] on 127.0.0.1: prints "bound" or the errno's name.
BIND = r"""
import errno, socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
    print("bound")
except OSError as e:
    print(errno.errorcode[e.errno])
"""

# Listens on 127.0.0.1 ports argv[1] and argv[2] and connects to each:
# prints one word per port, "connected" or the errno's name.
TWO_SERVERS = r"""
import errno, socket, sys
ports = [int(p) for p in sys.argv[1:3]]
servers = []
for port in ports:
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen()
    servers.append(s)
out = []
for port in ports:
    c = socket.socket()
    c.settimeout(5)
    try:
        c.connect(("127.0.0.1", port))
        out.append("connected")
    except OSError as e:
        out.append(errno.errorcode.get(e.errno, str(e.errno)))
    c.close()
print(*out)
"""

# Forks argv[1] children that live a moment: prints how many forks worked
# and how many the kernel (or the supervisor) refused with EAGAIN.
FORKS = r"""
import os, sys, time
made, refused = [], 0
for _ in range(int(sys.argv[1])):
    try:
        pid = os.fork()
    except BlockingIOError:
        refused += 1
        continue
    if pid == 0:
        time.sleep(0.5)
        os._exit(0)
    made.append(pid)
for pid in made:
    os.waitpid(pid, 0)
print(len(made), refused)
"""

# -- callers other than this process -------------------------------------------

DRIVER = r"""
import json, sys
import anyio
import asyncsandlock as asl

cases, backend, readable = json.loads(sys.argv[1])

async def main():
    out = []
    for kw, cmd in cases:
        if "degrade" in kw:  # the subsystems on_unavailable lets go
            names = kw.pop("degrade")
            kw["on_unavailable"] = asl.allow_degraded(*(asl.Subsystem[n] for n in names))
        try:
            sb = asl.Sandbox(**{"fs_readable": readable, **kw})
            r = await sb.run(cmd, timeout=30)
            out.append({"rc": r.returncode, "stdout": r.stdout.decode(),
                        "stderr": r.stderr.decode()[-2000:],
                        "protections": {k.name: v.name for k, v in r.protections.items()},
                        "unenforced": {k.name: list(v) for k, v in r.unenforced.items()}})
        except asl.ConfinementUnavailable as exc:
            out.append({"refused": exc.subsystem.name, "errno": exc.errno})
    print(json.dumps(out))

anyio.run(main, backend=backend)
"""

AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
# Root with CAP_SETUID and CAP_SETGID but no CAP_SYS_ADMIN (a container's
# usual set): setresuid in the child, a user namespace for the network.
AS_ROOT_WITHOUT_SYS_ADMIN = ["setpriv", "--bounding-set=-sys_admin,-net_admin", "--inh-caps=-all"]


def drive(prefix: list[str], backend: str, cases: list[tuple[dict[str, Any], list[str]]],
          prelude: str = "") -> list[dict[str, Any]]:
    """Run ``cases`` in a fresh interpreter started with ``prefix``; ``prelude``:
    code it runs first."""
    proc = subprocess.run([*prefix, PYTHON, "-c", prelude + DRIVER,
                           json.dumps([cases, backend, READABLE])],
                          capture_output=True, text=True, timeout=120, cwd="/",
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report: list[dict[str, Any]] = json.loads(proc.stdout.splitlines()[-1])
    return report


def _user_namespaces_for(prefix: list[str]) -> bool:
    probe = subprocess.run([*prefix, "unshare", "--user", "--net", "true"], capture_output=True)
    return probe.returncode == 0


def who(run: dict[str, Any]) -> dict[str, Any]:
    assert run.get("rc") == 0, run
    found: dict[str, Any] = json.loads(run["stdout"])
    return found


needs_nobody_userns = pytest.mark.skipif(
    os.geteuid() != 0 or not _user_namespaces_for(AS_NOBODY),
    reason="needs root to drop to 65534, and a user namespace for 65534")


@needs_nobody_userns
@pytest.mark.parametrize("backend", BACKENDS)
def test_unprivileged_uid_and_loopback_share_one_user_namespace(backend: str) -> None:
    both, net_only, uid_only = drive(AS_NOBODY, backend, [
        ({"uid": 1234, "gid": 5, "network": "loopback"}, [PY, "-c", WHO]),
        ({"network": "loopback"}, [PY, "-c", WHO]),
        ({"uid": 1234, "gid": 5}, [PY, "-c", WHO]),
    ])
    got = who(both)
    assert got["ids"] == [1234] * 3 + [5] * 3 and got["groups"] == [], got
    assert got["links"] == ["lo"]
    # One namespace: the one the child is in owns its network (nested, the
    # owner would be the outer one, out of the child's reach).
    assert got["netowner"] == got["user"], got
    assert {both["protections"]["IDENTITY"], both["protections"]["NETWORK_NAMESPACE"]} == {
        "ACTIVE"}
    # Each alone, as before: the caller's ids with a network; the ids on the
    # caller's network.
    alone = who(net_only)
    assert alone["ids"] == [65534] * 6 and alone["links"] == ["lo"]
    assert alone["netowner"] == alone["user"]
    ids = who(uid_only)
    assert ids["ids"] == [1234] * 3 + [5] * 3 and len(ids["links"]) > 1


@needs_nobody_userns
@pytest.mark.parametrize("backend", BACKENDS)
def test_unprivileged_low_ports_bound_in_its_own_network_only(backend: str) -> None:
    """uid 0 of the namespace that owns the sandbox's network keeps
    CAP_NET_BIND_SERVICE, which reaches that network and nothing else; any
    other uid gets the ports through that network's own
    ip_unprivileged_port_start."""
    own, host, unlisted, other_uid = drive(AS_NOBODY, backend, [
        ({"uid": 0, "network": "loopback", "net_allow_bind": [80]}, [PY, "-c", BIND, "80"]),
        ({"uid": 0, "net_allow_bind": [80]}, [PY, "-c", BIND, "80"]),
        ({"uid": 0, "network": "loopback", "net_allow_bind": [81]}, [PY, "-c", BIND, "80"]),
        ({"uid": 1234, "network": "loopback", "net_allow_bind": [80]}, [PY, "-c", BIND, "80"]),
    ])
    assert own["stdout"].split() == ["bound"], own  # the control
    assert host["stdout"].split() == ["EACCES"], host  # the caller's network: held
    assert unlisted["stdout"].split() == ["EACCES"], unlisted  # Landlock's rule still holds
    assert other_uid["stdout"].split() == ["bound"], other_uid


@needs_nobody_userns
@pytest.mark.parametrize("backend", BACKENDS)
def test_unprivileged_uid_loopback_and_max_processes(backend: str) -> None:
    limited, free = drive(AS_NOBODY, backend, [
        ({"uid": 1234, "network": "loopback", "max_processes": 3}, [PY, "-c", FORKS, "5"]),
        ({"uid": 1234, "network": "loopback"}, [PY, "-c", FORKS, "5"]),
    ])
    assert limited["stdout"].split() == ["2", "3"], limited
    assert free["stdout"].split() == ["5", "0"], free


@needs_nobody_userns
@pytest.mark.parametrize("backend", BACKENDS)
def test_unprivileged_uid_and_loopback_refused_go_to_on_unavailable_each(backend: str) -> None:
    """A host refusing user namespaces refuses both: the network step (the
    one namespace) first, then, if the policy lets the network go, the
    identity, each put to on_unavailable and named in the report."""
    refuse = [build_helper("refuse"), "unshare=EPERM", "--", *AS_NOBODY]
    both = {"uid": 1234, "network": "loopback"}
    strict, network_only, degraded = drive(refuse, backend, [
        (both, [PY, "-c", WHO]),
        ({**both, "degrade": ["NETWORK_NAMESPACE"]}, [PY, "-c", WHO]),
        ({**both, "degrade": ["NETWORK_NAMESPACE", "IDENTITY"]}, [PY, "-c", WHO]),
    ])
    assert strict == {"refused": "NETWORK_NAMESPACE", "errno": errno.EPERM}
    assert network_only == {"refused": "IDENTITY", "errno": errno.EPERM}
    got = who(degraded)
    assert got["ids"] == [65534] * 6 and len(got["links"]) > 1  # the caller's, and says so:
    assert degraded["unenforced"] == {"NETWORK_NAMESPACE": ["network"],
                                      "IDENTITY": ["uid", "gid"]}, degraded


@pytest.mark.skipif(os.geteuid() != 0 or not _user_namespaces_for(AS_ROOT_WITHOUT_SYS_ADMIN),
                    reason="needs root, and a user namespace without CAP_SYS_ADMIN")
@pytest.mark.parametrize("backend", BACKENDS)
def test_root_without_sys_admin_sets_the_uid_then_makes_the_network(backend: str) -> None:
    """Regression test: the user namespace of the network was made first, and
    setresuid to an id not mapped in it failed (EINVAL)."""
    other, root, low = drive(AS_ROOT_WITHOUT_SYS_ADMIN, backend, [
        ({"uid": 1234, "gid": 5, "network": "loopback"}, [PY, "-c", WHO]),
        ({"uid": 0, "network": "loopback", "net_allow_bind": [80]}, [PY, "-c", BIND, "80"]),
        ({"uid": 1234, "network": "loopback", "net_allow_bind": [80]}, [PY, "-c", BIND, "80"]),
    ])
    assert low["stdout"].split() == ["bound"], low
    got = who(other)
    assert got["ids"] == [1234] * 3 + [5] * 3 and got["groups"] == [], got
    assert got["links"] == ["lo"] and got["netowner"] == got["user"]
    assert root["stdout"].split() == ["bound"], root


# -- a root caller, in this process ---------------------------------------------------

pytestmark = pytest.mark.usefixtures("no_leaks")


@root_only
@pytest.mark.anyio
@pytest.mark.parametrize("network", ["loopback", "loopback+publish", "uplink"])
async def test_root_caller_uid_and_network(anyio_backend: str, network: str) -> None:
    """The network first (it needs CAP_SYS_ADMIN), then setresuid: the
    namespace is the caller's user namespace's, the ids the policy's."""
    publish = [8080] if network.endswith("publish") else []
    got = await Sandbox(fs_readable=READABLE, uid=65534, gid=65534,
                        network=network.partition("+")[0], publish=publish).run([PY, "-c", WHO])
    assert got.returncode == 0, got.stderr
    found = json.loads(got.stdout)
    assert found["ids"] == [65534] * 6 and found["groups"] == []
    assert found["links"] == (["lo", "eth0"] if network == "uplink" else ["lo"])
    assert found["user"] == os.stat("/proc/self/ns/user").st_ino == found["netowner"]
    assert got.protections[Subsystem.IDENTITY] is Protection.ACTIVE
    assert got.protections[Subsystem.NETWORK_NAMESPACE] is Protection.ACTIVE


PORT_START = "/proc/sys/net/ipv4/ip_unprivileged_port_start"


@root_only
@pytest.mark.anyio
@pytest.mark.parametrize("network", ["loopback", "loopback+publish"])
async def test_a_uid_binds_the_low_ports_listed_in_its_own_network(anyio_backend: str,
                                                                   network: str) -> None:
    """setresuid empties the capability sets; a network of the sandbox's own
    lowers its ip_unprivileged_port_start to the lowest port listed, and
    Landlock still decides which ports."""
    host_before = pathlib.Path(PORT_START).read_text()
    own = {"network": "loopback", "publish": [8080] if network.endswith("publish") else []}
    bound = await Sandbox(fs_readable=READABLE, uid=65534, net_allow_bind=[80, 443],
                          **own).run([PY, "-c", BIND, "80"])
    assert bound.stdout.split() == [b"bound"], bound.stderr
    unlisted = await Sandbox(fs_readable=READABLE, uid=65534, net_allow_bind=[443],
                             **own).run([PY, "-c", BIND, "80"])
    assert unlisted.stdout.split() == [b"EACCES"], unlisted.stderr  # Landlock's rule holds
    # On the caller's network the uid still cannot, and the host's sysctl is untouched.
    host = await Sandbox(fs_readable=READABLE, uid=65534,
                         net_allow_bind=[80]).run([PY, "-c", BIND, "80"])
    assert host.stdout.split() == [b"EACCES"], host.stderr
    assert pathlib.Path(PORT_START).read_text() == host_before


@pytest.fixture
def tree() -> Iterator[pathlib.Path]:
    """``own`` and ``denied/own``, both 0600 and owned by 65534."""
    base = pathlib.Path(tempfile.mkdtemp(prefix="asl-combo-", dir="/tmp"))
    base.chmod(0o755)
    (base / "denied").mkdir(mode=0o755)
    for path in (base / "own", base / "denied" / "own"):
        path.write_text("mine\n")
        path.chmod(0o600)
        if os.geteuid() == 0:
            os.chown(path, 65534, 65534)
    yield base
    shutil.rmtree(base)


@root_only
@pytest.mark.anyio
async def test_fs_denied_holds_for_the_files_the_uid_owns(anyio_backend: str,
                                                          tree: pathlib.Path) -> None:
    helper = build_helper("escape")
    readable = [*SYSTEM_READABLE, os.path.dirname(helper), tree]
    holed = Sandbox(fs_readable=readable, fs_denied=[tree / "denied"], uid=65534)
    held = await holed.run([helper, "open", f"{tree}/denied/own", "r"])
    assert held.returncode == errno.EACCES, held
    # Controls: what the uid owns outside the hole; the same file without it.
    assert (await holed.run([helper, "open", f"{tree}/own", "r"])).returncode == 0
    whole = Sandbox(fs_readable=readable, uid=65534)
    assert (await whole.run([helper, "open", f"{tree}/denied/own", "r"])).returncode == 0


@root_only
@pytest.mark.anyio
async def test_max_processes_in_a_network_of_its_own(anyio_backend: str) -> None:
    limited = await Sandbox(fs_readable=READABLE, network="loopback", uid=65534,
                            max_processes=3).run([PY, "-c", FORKS, "5"])
    assert limited.stdout.split() == [b"2", b"3"], limited.stderr
    free = await Sandbox(fs_readable=READABLE, network="loopback",
                         uid=65534).run([PY, "-c", FORKS, "5"])
    assert free.stdout.split() == [b"5", b"0"], free.stderr


@root_only
@pytest.mark.anyio
@pytest.mark.parametrize("rule", ["port", "address"])
async def test_net_allow_holds_on_the_namespaces_own_loopback(anyio_backend: str,
                                                              rule: str) -> None:
    """The namespace decides what exists, the rules what may be used: two
    servers of the sandbox on its own 127.0.0.1, and a rule for one."""
    a, b = 40001, 40002
    allow = [f":{a}"] if rule == "port" else [f"127.0.0.1:{a}"]
    sb = Sandbox(fs_readable=READABLE, network="loopback", net_allow=allow,
                 net_allow_bind=[a, b])
    got = await sb.run([PY, "-c", TWO_SERVERS, str(a), str(b)])
    assert got.stdout.split() == [b"connected", b"EACCES"], got.stderr
    # The control: both allowed.
    control = await Sandbox(fs_readable=READABLE, network="loopback", net_allow=["*"],
                            net_allow_bind=[a, b]).run([PY, "-c", TWO_SERVERS, str(a), str(b)])
    assert control.stdout.split() == [b"connected", b"connected"], control.stderr


@root_only
@pytest.mark.anyio
async def test_workdir_with_uid_and_a_network_of_its_own(anyio_backend: str,
                                                          tree: pathlib.Path) -> None:
    """The workspace's mount namespace, then the network, then setresuid."""
    tree.chmod(0o777)
    got = await Sandbox(fs_readable=READABLE, workdir=tree, on_exit="abort", uid=65534,
                        network="loopback").run(
        ["sh", "-c", f"id -u && echo new > {tree}/made && cat /proc/self/net/dev"])
    assert got.returncode == 0, got.stderr
    lines = got.stdout.decode().splitlines()
    assert lines[0] == "65534" and [line.split(":")[0].strip() for line in lines[3:]] == ["lo"]
    assert [(c.path, c.kind) for c in got.changes or ()] == [("made", "added")]
    assert not (tree / "made").exists()  # aborted


# Forks under a SIGCHLD handler without SA_RESTART (helpers/signalled_forks.py).
SIGNALLED_FORKS = (pathlib.Path(__file__).parent / "helpers" / "signalled_forks.py").read_text()


@pytest.mark.anyio
async def test_max_processes_forks_are_not_interrupted_by_signals(anyio_backend: str) -> None:
    control = await Sandbox(fs_readable=READABLE).run([PY, "-c", SIGNALLED_FORKS, "100"])
    assert control.stdout.split() == [b"0"], control.stderr
    got = await Sandbox(fs_readable=READABLE, max_processes=1000).run(
        [PY, "-c", SIGNALLED_FORKS, "100"])
    assert got.stdout.split() == [b"0"], got.stderr
