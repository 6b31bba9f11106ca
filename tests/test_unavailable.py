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
                     max_processes=cfg.get("max_processes"), on_unavailable=decide)
    runs = []

    async def one():
        try:
            r = await sb.run(cfg["cmd"], timeout=60)
        except asl.ConfinementUnavailable as exc:
            runs.append({"ok": False, "type": "ConfinementUnavailable",
                         "subsystem": exc.subsystem.name, "errno": exc.errno,
                         "message": str(exc)})
        except Exception as exc:
            runs.append({"ok": False, "type": type(exc).__name__, "message": str(exc),
                         "step": getattr(exc, "step", None), "errno": getattr(exc, "errno", None)})
        else:
            runs.append({"ok": r.success, "stdout": r.stdout.decode(), "stderr": r.stderr.decode(),
                         "protections": {k.name: v.name for k, v in r.protections.items()}})

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
        assert prot["SUPERVISOR"] == "NOT_REQUESTED"
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


def test_no_listener_is_fine_when_nothing_needs_the_supervisor(
        refuse: str, anyio_backend: str, tmp_path: pathlib.Path) -> None:
    report = drive(refuse, ["seccomp-listener=EBUSY"], anyio_backend, tmp_path, policy="strict")
    run = report["runs"][0]
    assert run["ok"], run
    assert run["protections"]["SUPERVISOR"] == "NOT_REQUESTED"
    assert report["warnings"] == []


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
    outer = Sandbox(fs_readable=readable(), fs_writable=[str(tmp_path)],
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
        result = await proc.result()
    assert result.protections == proc.protections


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
