"""``asyncsandlock check``: the table, and an exit status that tells whether
a default (strict) sandbox runs here.  Refusals come from tests/helpers/refuse.c."""

from __future__ import annotations

import subprocess

import pytest

from conftest import PYTHON, build_helper


@pytest.fixture(scope="module")
def refuse() -> str:
    return build_helper("refuse")


def check(*prefix: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, PYTHON, "-m", "asyncsandlock", "check"],
                          capture_output=True, text=True, timeout=120)


def test_check_here_prints_the_table_and_exits_0() -> None:
    proc = check()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for row in ("Landlock", "seccomp filter", "seccomp user notification", "SYNC_WAKE_UP",
                "pidfd", "clone3", "user namespaces", "network namespaces", "this process"):
        assert row in proc.stdout
    assert "yes (ABI " in proc.stdout
    assert "a default (strict) sandbox runs here" in proc.stdout
    assert "syscall handlers and max_processes run here" in proc.stdout


# (refuse rules, exit status, what the output must say)
REFUSED = [
    (["landlock_create_ruleset=ENOSYS"], 1,
     ["no (ENOSYS", "cannot run here: landlock", "lsm="]),
    (["seccomp=EINVAL"], 1, ["no (EINVAL", "cannot run here: seccomp"]),
    # A default sandbox needs no supervisor: reported, but the status stays 0.
    (["seccomp-listener=EBUSY"], 0,
     ["no (EBUSY", "under a seccomp listener", "a default (strict) sandbox runs here",
      "syscall handlers and max_processes cannot run here: supervisor",
      "allow_degraded(Subsystem.SUPERVISOR)"]),
    (["unshare=EPERM"], 0, ["no (EPERM", "a default (strict) sandbox runs here"]),
]


@pytest.mark.parametrize(("rules", "status", "says"), REFUSED,
                         ids=[" ".join(rules) for rules, _, _ in REFUSED])
def test_check_under_refusals(refuse: str, rules: list[str], status: int,
                              says: list[str]) -> None:
    proc = check(refuse, *rules, "--")
    assert proc.returncode == status, proc.stdout + proc.stderr
    for text in says:
        assert text in proc.stdout
