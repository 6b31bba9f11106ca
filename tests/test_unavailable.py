"""``on_unavailable``: strict refusals, allowed degradation, custom policies.

Every refusal is real: the library runs in a helper process started under
``tests/helpers/refuse.c``, whose seccomp filter answers chosen system calls
with chosen errnos the way gVisor, an old kernel, a container profile or an
outer sandbox would.  Nothing is mocked.
"""

from __future__ import annotations

import errno
import json
import pathlib
import subprocess
import sys
from typing import Any

import pytest

from asyncsandlock import (
    SYSTEM_READABLE,
    ConfinementUnavailable,
    Protection,
    Sandbox,
    Subsystem,
    allow_degraded,
    strict,
)
from asyncsandlock._enforcement import consequence, unenforced

from conftest import PYTHON, build_helper

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Runs the library on one backend as told by a JSON config; prints a JSON report.
DRIVER = r"""
import errno, json, logging, sys
import anyio
import asyncsandlock as asl

cfg = json.loads(sys.argv[1])
calls = []
handled = []
warnings = []

class Count(asl.Handler):
    syscalls = ("uname",)
    async def handle(self, ctx):
        handled.append(ctx.syscall)
        return asl.NotifAction.continue_()

class Collect(logging.Handler):
    def emit(self, record):
        if record.levelno == logging.WARNING:
            warnings.append(record.getMessage())

logging.getLogger("asyncsandlock").addHandler(Collect())

def record(sub, err):
    calls.append([sub.name, err.errno, getattr(err, "step", None)])

async def record_async(sub, err):
    await anyio.sleep(0)
    record(sub, err)

def refuse(sub, err):
    raise RuntimeError(f"custom refusal of {sub.name}")

policy = cfg["policy"]
if policy == "strict":
    decide = asl.strict
elif policy == "record":
    decide = record
elif policy == "record-async":
    decide = record_async
elif policy == "refuse":
    decide = refuse
else:
    decide = asl.allow_degraded(*(asl.Subsystem[name] for name in policy))

async def main():
    sb = asl.Sandbox(fs_readable=cfg["readable"], fs_writable=cfg["writable"],
                     handlers=[Count()] if cfg.get("handler") else [],
                     extra_deny_syscalls=cfg.get("extra_deny", ()),
                     max_processes=cfg.get("max_processes"), on_unavailable=decide)
    runs = []

    async def one():
        try:
            r = await sb.run(cfg["cmd"], timeout=60,
                             handlers=[Count()] if cfg.get("run_handler") else [])
        except asl.ConfinementUnavailable as exc:
            runs.append({"ok": False, "type": "ConfinementUnavailable",
                         "subsystem": exc.subsystem.name, "errno": exc.errno,
                         "message": str(exc), "unenforced": list(exc.unenforced)})
        except Exception as exc:
            runs.append({"ok": False, "type": type(exc).__name__, "message": str(exc),
                         "step": getattr(exc, "step", None), "errno": getattr(exc, "errno", None)})
        else:
            runs.append({"ok": r.success, "stdout": r.stdout.decode(), "stderr": r.stderr.decode(),
                         "protections": {k.name: v.name for k, v in r.protections.items()},
                         "unenforced": {k.name: list(v) for k, v in r.unenforced.items()}})

    for _ in range(cfg.get("runs", 1)):
        await one()
    async with anyio.create_task_group() as tg:  # first runs of one Sandbox, at once
        for _ in range(cfg.get("concurrent", 0)):
            tg.start_soon(one)
    print(json.dumps({"runs": runs, "calls": calls, "handled": len(handled),
                      "warnings": warnings}))

anyio.run(main, backend=cfg["backend"])
"""


@pytest.fixture(scope="module")
def refuse() -> str:
    return build_helper("refuse")


def readable() -> list[str]:
    """What a sandboxed Python that imports asyncsandlock needs to read."""
    return [*SYSTEM_READABLE, sys.base_prefix, sys.prefix, str(ROOT), "/proc"]


def drive(refuse: str, rules: list[str], backend: str, tmp: pathlib.Path,
          **cfg: Any) -> dict[str, Any]:
    """Run DRIVER under ``refuse RULES...`` and return its report."""
    tmp.chmod(0o777)
    config = {"backend": backend, "readable": list(SYSTEM_READABLE), "writable": [str(tmp)],
              "cmd": ["/bin/sh", "-c", f"echo ran >> {tmp}/marker; uname -s"], **cfg}
    proc = subprocess.run([refuse, *rules, "--", PYTHON, "-c", DRIVER, json.dumps(config)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout)
    return report


def ran(tmp: pathlib.Path) -> int:
    """How many times the sandboxed command ran."""
    marker = tmp / "marker"
    return len(marker.read_text().splitlines()) if marker.exists() else 0


def refused(run: dict[str, Any], subsystem: Subsystem, err: int) -> None:
    assert run["ok"] is False
    assert run["type"] == "ConfinementUnavailable", run
    assert (run["subsystem"], run["errno"]) == (subsystem.name, err), run
    assert "hint:" in run["message"]


# -- the policy objects themselves ----------------------------------------


def test_strict_raises_with_subsystem_errno_and_hint() -> None:
    with pytest.raises(ConfinementUnavailable) as info:
        strict(Subsystem.SUPERVISOR, OSError(errno.EBUSY, "busy"))
    assert info.value.subsystem is Subsystem.SUPERVISOR
    assert info.value.errno == errno.EBUSY
    assert "EBUSY" in str(info.value) and "listener" in info.value.hint


def test_every_subsystem_has_a_hint() -> None:
    for sub in Subsystem:
        with pytest.raises(ConfinementUnavailable) as info:
            strict(sub, OSError(errno.ENOSYS, "no"))
        assert info.value.hint


def test_allow_degraded_allows_exactly_its_subsystems() -> None:
    policy = allow_degraded(Subsystem.LANDLOCK, Subsystem.SUPERVISOR)
    assert policy(Subsystem.LANDLOCK, OSError(errno.ENOSYS, "")) is None
    assert policy(Subsystem.SUPERVISOR, OSError(errno.EBUSY, "")) is None
    with pytest.raises(ConfinementUnavailable) as info:
        policy(Subsystem.SECCOMP, OSError(errno.EINVAL, ""))
    assert info.value.subsystem is Subsystem.SECCOMP
    assert "LANDLOCK" in repr(policy)


def test_allow_degraded_rejects_non_subsystems() -> None:
    with pytest.raises(TypeError):
        allow_degraded("landlock")  # type: ignore[arg-type]


def test_unenforced_names_fields_of_this_policy() -> None:
    """One function decides what each subsystem's absence costs a policy."""
    plain = Sandbox()
    assert unenforced(plain, Subsystem.SUPERVISOR) == ()
    assert unenforced(plain, Subsystem.SUPERVISOR, run_handlers=True) == ("handlers",)
    assert unenforced(Sandbox(max_processes=5), Subsystem.SUPERVISOR) == ("max_processes",)
    assert unenforced(plain, Subsystem.LANDLOCK) == (
        "fs_readable", "fs_writable", "net_allow", "net_allow_bind")
    # Every TCP port open: Landlock restricts no connect, only binds.
    assert unenforced(Sandbox(net_allow=["*"]), Subsystem.LANDLOCK_NET) == ("net_allow_bind",)
    # What the policy allows anyway is not a loss.
    assert unenforced(Sandbox(allow_unix_sockets=True, allow_sysv_ipc=True, interactive=True),
                      Subsystem.SECCOMP) == ("net_allow",)
    assert unenforced(plain, Subsystem.PROCESS_GROUP) == ("timeout",)
    assert unenforced(plain, Subsystem.NETWORK_NAMESPACE) == ()
    for sub in set(Subsystem) - {Subsystem.NETWORK_NAMESPACE, Subsystem.SUPERVISOR}:
        assert consequence(plain, sub), sub  # every loss is told


def test_confinement_unavailable_without_a_policy_still_reads_well() -> None:
    exc = ConfinementUnavailable(Subsystem.SUPERVISOR, errno.EBUSY, "a hint")
    assert exc.unenforced == ()
    assert str(exc) == ("supervisor is unavailable on this host (EBUSY: Device or resource "
                        "busy); hint: a hint")


def test_sandbox_rejects_a_non_callable_policy() -> None:
    with pytest.raises(ValueError, match="on_unavailable"):
        Sandbox(on_unavailable="strict")  # type: ignore[arg-type]


# -- Landlock missing (gVisor, old kernels, lsm= without landlock) ---------

NO_LANDLOCK = ["landlock_create_ruleset=ENOSYS"]


def test_no_landlock_strict_refuses_and_nothing_runs(refuse: str, anyio_backend: str,
                                                     tmp_path: pathlib.Path) -> None:
    report = drive(refuse, NO_LANDLOCK, anyio_backend, tmp_path, policy="strict")
    refused(report["runs"][0], Subsystem.LANDLOCK, errno.ENOSYS)
    assert "lsm=" in report["runs"][0]["message"]
    assert ran(tmp_path) == 0


def test_no_landlock_allowed_runs_degraded_and_warns(refuse: str, anyio_backend: str,
                                                     tmp_path: pathlib.Path) -> None:
    report = drive(refuse, NO_LANDLOCK, anyio_backend, tmp_path, policy=["LANDLOCK"], runs=2)
    for run in report["runs"]:
        assert run["ok"], run
        prot = run["protections"]
        assert prot["LANDLOCK"] == prot["LANDLOCK_NET"] == prot["LANDLOCK_SCOPE"] == "DEGRADED"
        assert prot["SECCOMP"] == "ACTIVE"
        assert prot["SUPERVISOR"] == "ACTIVE"  # the guards of fs_writable's metadata
    assert ran(tmp_path) == 2
    assert len(report["warnings"]) == 2  # one per degraded run
    assert "landlock" in report["warnings"][0]


@pytest.mark.parametrize("policy", ["record", "record-async"])
def test_no_landlock_custom_policy_sees_the_real_errno_once(
        refuse: str, anyio_backend: str, tmp_path: pathlib.Path, policy: str) -> None:
    report = drive(refuse, NO_LANDLOCK, anyio_backend, tmp_path, policy=policy, runs=3)
    assert report["calls"] == [["LANDLOCK", errno.ENOSYS, None]]
    assert all(run["ok"] for run in report["runs"])
    assert ran(tmp_path) == 3


# (refuse rules, whether the sandbox has a handler, the one decision expected)
CONCURRENT = {
    "parent-side": (NO_LANDLOCK, False, ["LANDLOCK", errno.ENOSYS, None]),
    "child-side": (["seccomp-listener=EBUSY"], True, ["SUPERVISOR", errno.EBUSY, "seccomp"]),
}


@pytest.mark.parametrize("case", CONCURRENT)
def test_concurrent_first_runs_share_one_decision(refuse: str, anyio_backend: str,
                                                  tmp_path: pathlib.Path, case: str) -> None:
    rules, handler, decided = CONCURRENT[case]
    report = drive(refuse, rules, anyio_backend, tmp_path, policy="record-async",
                   handler=handler, runs=0, concurrent=4)
    assert report["calls"] == [decided]
    assert len(report["runs"]) == 4 and all(run["ok"] for run in report["runs"])
    assert ran(tmp_path) == 4


def test_a_custom_refusal_propagates_and_nothing_runs(refuse: str, anyio_backend: str,
                                                      tmp_path: pathlib.Path) -> None:
    report = drive(refuse, NO_LANDLOCK, anyio_backend, tmp_path, policy="refuse")
    run = report["runs"][0]
    assert (run["ok"], run["type"]) == (False, "RuntimeError")
    assert "LANDLOCK" in run["message"]
    assert ran(tmp_path) == 0


# -- Landlock refused in the child (landlock_restrict_self) ----------------

RESTRICT_FAILS = ["landlock_restrict_self=E2BIG"]


def test_child_side_landlock_refusal_strict(refuse: str, anyio_backend: str,
                                            tmp_path: pathlib.Path) -> None:
    report = drive(refuse, RESTRICT_FAILS, anyio_backend, tmp_path, policy="strict")
    refused(report["runs"][0], Subsystem.LANDLOCK, errno.E2BIG)
    assert ran(tmp_path) == 0


def test_child_side_landlock_refusal_allowed_is_really_unconfined(
        refuse: str, anyio_backend: str, tmp_path: pathlib.Path) -> None:
    secret = tmp_path / "outside" / "secret"
    secret.parent.mkdir()
    secret.write_text("s3cret")
    writable = tmp_path / "work"
    writable.mkdir()
    report = drive(refuse, RESTRICT_FAILS, anyio_backend, writable, policy="record", runs=2,
                   cmd=["/bin/cat", str(secret)])
    assert report["calls"] == [["LANDLOCK", errno.E2BIG, "landlock"]]
    for run in report["runs"]:
        # DEGRADED is the truth: the file outside fs_readable is readable.
        assert run["ok"] and run["stdout"] == "s3cret", run
        assert run["protections"]["LANDLOCK"] == "DEGRADED"
        assert run["protections"]["SECCOMP"] == "ACTIVE"
        assert "fs_readable" in run["unenforced"]["LANDLOCK"]  # and so it says


# -- seccomp user notification refused (nested sandbox: EBUSY; gVisor: EINVAL)

@pytest.mark.parametrize("err", ["EBUSY", "EINVAL"])
def test_no_listener_strict_refuses_supervisor(refuse: str, anyio_backend: str,
                                               tmp_path: pathlib.Path, err: str) -> None:
    report = drive(refuse, [f"seccomp-listener={err}"], anyio_backend, tmp_path,
                   policy="strict", handler=True)
    # EINVAL too is put down to the listener, not to seccomp: a plain filter works here.
    refused(report["runs"][0], Subsystem.SUPERVISOR, getattr(errno, err))
    assert ran(tmp_path) == 0


@pytest.mark.parametrize("err", ["EBUSY", "EINVAL"])
def test_no_listener_allowed_runs_filter_only(refuse: str, anyio_backend: str,
                                              tmp_path: pathlib.Path, err: str) -> None:
    report = drive(refuse, [f"seccomp-listener={err}"], anyio_backend, tmp_path,
                   policy=["SUPERVISOR"], handler=True, runs=2)
    for run in report["runs"]:
        assert run["ok"], run
        assert run["stdout"] == "Linux\n"
        assert run["protections"]["SUPERVISOR"] == "DEGRADED"
        assert run["protections"]["SECCOMP"] == "ACTIVE"
        assert run["protections"]["LANDLOCK"] == "ACTIVE"
    assert report["handled"] == 0  # nothing was trapped
    assert len(report["warnings"]) == 2 and "supervisor" in report["warnings"][0]


def test_no_listener_custom_async_policy_sees_ebusy_once(refuse: str, anyio_backend: str,
                                                         tmp_path: pathlib.Path) -> None:
    report = drive(refuse, ["seccomp-listener=EBUSY"], anyio_backend, tmp_path,
                   policy="record-async", handler=True, runs=2)
    assert report["calls"] == [["SUPERVISOR", errno.EBUSY, "seccomp"]]
    assert all(run["ok"] for run in report["runs"])


def test_no_listener_guards_fail_closed_without_asking(
        refuse: str, anyio_backend: str, tmp_path: pathlib.Path) -> None:
    """Only the built-in guards want the supervisor: refused, the filter
    denies their calls instead, so even strict runs, and the report says so."""
    report = drive(refuse, ["seccomp-listener=EBUSY"], anyio_backend, tmp_path, policy="strict")
    run = report["runs"][0]
    assert run["ok"], run
    assert run["protections"]["SUPERVISOR"] == "DEGRADED"
    assert run["unenforced"] == {"SUPERVISOR": []}
    assert len(report["warnings"]) == 1
    assert "fail closed" in report["warnings"][0] and "chmod" in report["warnings"][0]
    assert ran(tmp_path) == 1


def test_max_processes_needs_the_supervisor(refuse: str, anyio_backend: str,
                                            tmp_path: pathlib.Path) -> None:
    report = drive(refuse, ["seccomp-listener=EBUSY"], anyio_backend, tmp_path,
                   policy="strict", max_processes=10)
    refused(report["runs"][0], Subsystem.SUPERVISOR, errno.EBUSY)
    assert ran(tmp_path) == 0


# -- seccomp refused altogether ------------------------------------------

NO_SECCOMP = ["seccomp=EINVAL"]


def test_no_seccomp_strict_refuses(refuse: str, anyio_backend: str,
                                   tmp_path: pathlib.Path) -> None:
    report = drive(refuse, NO_SECCOMP, anyio_backend, tmp_path, policy="strict", handler=True)
    refused(report["runs"][0], Subsystem.SECCOMP, errno.EINVAL)
    assert ran(tmp_path) == 0


def test_no_seccomp_means_no_supervisor_either(refuse: str, anyio_backend: str,
                                               tmp_path: pathlib.Path) -> None:
    report = drive(refuse, NO_SECCOMP, anyio_backend, tmp_path, policy=["SECCOMP"],
                   handler=True)
    refused(report["runs"][0], Subsystem.SUPERVISOR, errno.EINVAL)
    assert ran(tmp_path) == 0


def test_no_seccomp_allowed(refuse: str, anyio_backend: str, tmp_path: pathlib.Path) -> None:
    report = drive(refuse, NO_SECCOMP, anyio_backend, tmp_path, policy="record", handler=True,
                   runs=2)
    assert report["calls"] == [["SECCOMP", errno.EINVAL, "seccomp"],
                               ["SUPERVISOR", errno.EINVAL, None]]
    for run in report["runs"]:
        assert run["ok"], run
        prot = run["protections"]
        assert (prot["SECCOMP"], prot["SUPERVISOR"], prot["LANDLOCK"]) == (
            "DEGRADED", "DEGRADED", "ACTIVE")
    assert report["handled"] == 0


# -- namespaces refused (Kubernetes RuntimeDefault) -------------------------

def test_refused_namespaces_do_not_stop_a_default_sandbox(refuse: str, anyio_backend: str,
                                                          tmp_path: pathlib.Path) -> None:
    report = drive(refuse, ["unshare=EPERM", "clone3=ENOSYS"], anyio_backend, tmp_path,
                   policy="strict", handler=True)
    run = report["runs"][0]
    assert run["ok"], run
    assert run["protections"]["NETWORK_NAMESPACE"] == "NOT_REQUESTED"
    assert report["handled"] >= 1 and report["calls"] == []


# -- a real nested sandbox: asyncsandlock inside asyncsandlock --------------
#
# The outer sandbox runs the driver, which imports asyncsandlock and runs an
# inner sandbox with a Handler.  Only one listener is allowed per filter
# chain, so the inner supervisor is refused (EBUSY) when the outer one is
# supervised (max_processes here), and works when it is not.

async def _nested(anyio_backend: str, tmp_path: pathlib.Path, policy: object,
                  outer_supervised: bool = True, cmd: str = "") -> dict[str, Any]:
    tmp_path.chmod(0o777)
    inner = {"backend": anyio_backend, "readable": list(SYSTEM_READABLE),
             "writable": [str(tmp_path)], "policy": policy, "handler": True,
             "cmd": ["/bin/sh", "-c", cmd or f"echo ran >> {tmp_path}/marker; uname -s"]}
    # Unsupervised, the outer sandbox writes nothing: fs_writable's metadata
    # guards would give it a supervisor (and the inner one EBUSY).
    outer = Sandbox(fs_readable=[*readable(), str(tmp_path)],
                    fs_writable=[str(tmp_path)] if outer_supervised else [],
                    max_processes=64 if outer_supervised else None)
    result = await outer.run([PYTHON, "-c", DRIVER, json.dumps(inner)], timeout=120)
    assert result.success, result.stderr
    assert result.stdout is not None
    report: dict[str, Any] = json.loads(result.stdout)
    return report


@pytest.mark.anyio
async def test_nested_sandbox_refuses_clearly_by_default(anyio_backend: str,
                                                         tmp_path: pathlib.Path) -> None:
    report = await _nested(anyio_backend, tmp_path, "strict")
    run = report["runs"][0]
    # The outer filter denies setpgid, so the inner sandbox cannot have its
    # own process group: strict refuses that first.
    assert run["type"] == "ConfinementUnavailable", run
    assert "process-group" in run["message"] and "hint:" in run["message"]
    assert ran(tmp_path) == 0


@pytest.mark.anyio
async def test_nested_sandbox_runs_with_the_inner_supervisor_degraded(
        anyio_backend: str, tmp_path: pathlib.Path) -> None:
    report = await _nested(anyio_backend, tmp_path, "record")
    assert ["PROCESS_GROUP", errno.EPERM, "setpgid"] in report["calls"]
    assert ["SUPERVISOR", errno.EBUSY, "seccomp"] in report["calls"]
    run = report["runs"][0]
    assert run["ok"], run
    assert run["protections"]["SUPERVISOR"] == run["protections"]["PROCESS_GROUP"] == "DEGRADED"
    assert run["protections"]["SECCOMP"] == run["protections"]["LANDLOCK"] == "ACTIVE"
    assert run["unenforced"] == {"SUPERVISOR": ["handlers"], "PROCESS_GROUP": ["timeout"]}
    assert report["handled"] == 0
    assert ran(tmp_path) == 1


@pytest.mark.anyio
async def test_nested_sandbox_keeps_its_supervisor_under_an_unsupervised_one(
        anyio_backend: str, tmp_path: pathlib.Path) -> None:
    report = await _nested(anyio_backend, tmp_path, ["PROCESS_GROUP"], outer_supervised=False)
    run = report["runs"][0]
    assert run["ok"], run
    assert run["protections"]["SUPERVISOR"] == "ACTIVE"
    assert run["protections"]["PROCESS_GROUP"] == "DEGRADED"
    assert report["handled"] >= 1


@pytest.mark.anyio
async def test_protections_on_the_process_and_the_result() -> None:
    sb = Sandbox(fs_readable=SYSTEM_READABLE)
    async with await sb.open(["true"]) as proc:
        assert proc.protections[Subsystem.SECCOMP] is Protection.ACTIVE
        assert proc.protections[Subsystem.SUPERVISOR] is Protection.NOT_REQUESTED
        assert proc.unenforced == {}
        result = await proc.result()
    assert result.protections == proc.protections
    assert result.unenforced == {}


@pytest.mark.anyio
async def test_nested_run_does_not_wait_for_leftovers_holding_its_pipes(
        anyio_backend: str, tmp_path: pathlib.Path) -> None:
    """Regression test: without a process group of its own, a background
    child of the command is not killed with it; its copy of stdout must not
    keep run() reading until it exits (600 s here; the outer run gives up at 120 s)."""
    report = await _nested(anyio_backend, tmp_path, ["PROCESS_GROUP"], outer_supervised=False,
                           cmd="sleep 600 & echo started")
    run = report["runs"][0]
    assert run["ok"] and run["stdout"] == "started\n", run
    assert run["protections"]["PROCESS_GROUP"] == "DEGRADED"


# -- what goes unenforced (bug 3) ------------------------------------------
#
# Degrading a subsystem names the policy fields it was enforcing, in the
# warning, in ConfinementUnavailable and in Result.unenforced; each claim is
# paired with the attempt that shows the field really unenforced, and a
# control where the same policy holds.

FORK = ["/bin/sh", "-c", "/bin/true && echo forked"]


@pytest.mark.parametrize("refused_here", [True, False])
def test_no_supervisor_names_handlers_and_max_processes(
        refuse: str, anyio_backend: str, tmp_path: pathlib.Path, refused_here: bool) -> None:
    """Regression test for bug 3: the warning said only "runs without supervisor"."""
    rules = ["seccomp-listener=EBUSY"] if refused_here else ["unshare=EPERM"]
    report = drive(refuse, rules, anyio_backend, tmp_path, policy=["SUPERVISOR"], handler=True,
                   max_processes=1, cmd=FORK)
    run = report["runs"][0]
    if refused_here:
        # The claim, and the escape it announces: one process may fork.
        assert run["unenforced"] == {"SUPERVISOR": ["handlers", "max_processes"]}, run
        assert run["ok"] and run["stdout"] == "forked\n", run
        (warning,) = report["warnings"]
        assert "supervisor" in warning and "handlers, max_processes" in warning, warning
        assert report["handled"] == 0
    else:  # control: with a supervisor, max_processes=1 refuses the fork
        assert run["unenforced"] == {}, run
        assert run["stdout"] == "", run
        assert report["warnings"] == []


def test_no_supervisor_strict_says_what_would_go(refuse: str, anyio_backend: str,
                                                 tmp_path: pathlib.Path) -> None:
    report = drive(refuse, ["seccomp-listener=EBUSY"], anyio_backend, tmp_path, policy="strict",
                   handler=True, max_processes=10)
    run = report["runs"][0]
    refused(run, Subsystem.SUPERVISOR, errno.EBUSY)
    assert run["unenforced"] == ["handlers", "max_processes"]
    assert "unenforced: handlers, max_processes" in run["message"], run["message"]
    assert ran(tmp_path) == 0


def test_no_supervisor_for_a_run_handler_names_handlers(refuse: str, anyio_backend: str,
                                                        tmp_path: pathlib.Path) -> None:
    """The supervisor was wanted only by run(handlers=...): that is what goes."""
    report = drive(refuse, ["seccomp-listener=EBUSY"], anyio_backend, tmp_path,
                   policy=["SUPERVISOR"], run_handler=True)
    run = report["runs"][0]
    assert run["ok"] and run["unenforced"] == {"SUPERVISOR": ["handlers"]}, run
    assert report["handled"] == 0


@pytest.mark.parametrize("refused_here", [True, False])
def test_no_seccomp_names_the_deny_list_fields(refuse: str, anyio_backend: str,
                                               tmp_path: pathlib.Path, refused_here: bool) -> None:
    rules = NO_SECCOMP if refused_here else ["unshare=EPERM"]
    report = drive(refuse, rules, anyio_backend, tmp_path, policy=["SECCOMP", "SUPERVISOR"],
                   max_processes=10, extra_deny=["uname"], cmd=["/bin/uname", "-s"])
    run = report["runs"][0]
    if refused_here:
        assert run["unenforced"] == {
            "SECCOMP": ["extra_deny_syscalls", "max_processes", "allow_unix_sockets",
                        "allow_sysv_ipc", "interactive", "net_allow"],
            "SUPERVISOR": ["max_processes"]}, run
        # The claim's escape: the syscall extra_deny_syscalls names runs.
        assert run["ok"] and run["stdout"] == "Linux\n", run
        (warning,) = report["warnings"]
        assert "extra_deny_syscalls" in warning and "default syscall deny list" in warning
    else:  # control: the filter holds, uname(2) is denied
        assert run["unenforced"] == {} and not run["ok"], run
        assert run["stdout"] == ""


def test_no_landlock_names_the_file_and_port_fields(refuse: str, anyio_backend: str,
                                                    tmp_path: pathlib.Path) -> None:
    fields = ["fs_readable", "fs_writable", "net_allow", "net_allow_bind"]
    report = drive(refuse, NO_LANDLOCK, anyio_backend, tmp_path, policy=["LANDLOCK"])
    run = report["runs"][0]
    assert run["unenforced"]["LANDLOCK"] == fields, run
    assert run["unenforced"]["LANDLOCK_NET"] == ["net_allow", "net_allow_bind"]
    assert set(run["unenforced"]) == {
        sub for sub, state in run["protections"].items() if state == "DEGRADED"}
    (warning,) = report["warnings"]
    assert ", ".join(fields) in warning, warning
    # Strict: the message names them too.  (That they really go unenforced is
    # test_child_side_landlock_refusal_allowed_is_really_unconfined.)
    report = drive(refuse, NO_LANDLOCK, anyio_backend, tmp_path, policy="strict")
    assert ", ".join(fields) in report["runs"][0]["message"]
    assert report["runs"][0]["unenforced"] == fields
