"""``docs/syscalls.md`` says what the compiled filter does with every syscall.

The filter of the README's policy is compiled for x86_64 and aarch64 and
explored (``bpf_machine.outcomes``): every action each syscall can get,
over all argument values, is compared with the doc's row.  A change to the
filter or to the decision table that the doc does not follow fails here;
regenerate the doc with ``python tests/test_syscall_doc.py --write`` and
read the diff.
"""

from __future__ import annotations

import dataclasses
import errno
import pathlib
import re
import sys
import tempfile
from collections.abc import Iterator

import anyio
import pytest
from bpf_machine import ALLOW, ARCHES, KILL_PROCESS, USER_NOTIF, Filter

from asyncsandlock import SYSTEM_READABLE, Sandbox
from asyncsandlock._kernel._bpf import GUARDED, NET_GUARDED, FilterSpec
from asyncsandlock._kernel._syscall_policy import DECISIONS, GROUPS, Rule
from asyncsandlock._plan import Plan, compile_plan

DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "syscalls.md"
_ROW = re.compile(r"^\| `(\w+)` \| (\d+|—) \| (\d+|—) \| ([^|]+) \| ([^|]+) \|$")

_HEADER = """\
# Every syscall, decided

The seccomp filter (`asyncsandlock/_kernel/_bpf.py`) decides every syscall of the x86_64
and aarch64 tables by name; the decisions and their reasons live in
`asyncsandlock/_kernel/_syscall_policy.py`, grouped here the way systemd's
`SystemCallFilter=` sets are. This file is generated from them
(`python tests/test_syscall_doc.py --write`) and `tests/test_syscall_doc.py`
fails when it no longer says what the compiled filter does.

**Policy.** The action column is what the filter of the README's policy,
`Sandbox(fs_readable=SYSTEM_READABLE, fs_writable=[dir])`, can answer, over all
argument values, on both architectures:

- `allow`: the kernel runs the call (Landlock still checks paths and ports);
- `guard`: the call goes to a built-in guard in the supervisor
  (`asyncsandlock/handlers`), which checks the object itself. Without that guard
  (the policy does not need it, or the supervisor is unavailable) it is EPERM. For
  this policy the metadata, watch and other-process guards apply; `listen` has
  a guard only when `net_allow_bind` or `allow_unix_sockets` is set;
- an errno (`EPERM`, `ENOSYS`, `EACCES`, `EAFNOSUPPORT`): refused by the filter;
- several, separated by `/`: the arguments decide (the "why" says how).

**Before the table.** A call from another architecture (`seccomp_data.arch`,
e.g. the i386 ABI through `int 0x80`) and, on x86_64, any x32 number kill the
process. A number that no table below names (a syscall newer than this table)
is ENOSYS. The child's own calls between installing the filter and `execve`
(`write`, `sendmsg`, `exit_group`, `execve`, `prlimit64`) are let through when
they carry the per-policy key (64 random bits in argument 4, see `csrc/spawn.c`),
where their own row would not already allow the call the child makes.

**Other policies.** `allow_sysv_ipc=True` allows the SysV IPC and message-queue
calls; `interactive=True` allows the terminal ioctls; `net_allow=["*"]` allows
TCP fast open; `allow_unix_sockets`, UDP and ICMP rules and `extra_deny_syscalls`
change `socket` and the denied set; rules naming hosts or addresses, UDP ports,
ICMP or `net_deny` send `connect` and addressed sends to the network guard
(`docs/network.md`); a handler that traps an allowed call receives it
(USER_NOTIF) where this table says `allow`.
"""


def readme_policy_plan() -> Plan:
    with tempfile.TemporaryDirectory() as work:
        policy = Sandbox(fs_readable=SYSTEM_READABLE, fs_writable=[work])
        plan: Plan = anyio.run(compile_plan, policy)
    return plan


def _label(action: int) -> str:
    if action == ALLOW:
        return "allow"
    if action == USER_NOTIF:
        return "guard"
    if action == KILL_PROCESS:
        return "kill"
    assert action >> 16 == 0x0005, hex(action)
    return errno.errorcode[action & 0xFFFF]


def describe(outcomes: set[int]) -> str:
    """``allow / guard / EPERM``: the labels of ``outcomes`` in a fixed order."""
    labels = {_label(a) for a in outcomes}
    first = [x for x in ("allow", "guard") if x in labels]
    return " / ".join(first + sorted(labels - set(first)))


def guarded_spec(plan: Plan, arch: str) -> FilterSpec:
    """The plan's filter for ``arch`` as it is with every guard present."""
    table, audit = ARCHES[arch]
    return dataclasses.replace(plan.filter_spec(GUARDED, audit, table), guarded=GUARDED)


def derived(plan: Plan) -> dict[str, str]:
    """name -> action, from the filters of both architectures."""
    out: dict[str, str] = {}
    for arch in ARCHES:
        f = Filter.build(guarded_spec(plan, arch))
        for name in f.spec.table:
            action = describe(f.outcomes(name))
            assert out.setdefault(name, action) == action, f"{name}: the arches disagree"
    return out


def rows(actions: dict[str, str]) -> Iterator[str]:
    x86, arm = ARCHES["x86_64"][0], ARCHES["aarch64"][0]
    for group in GROUPS:
        members = [n for n, d in DECISIONS.items() if d.group == group]
        members.sort(key=lambda n: (x86.get(n, arm.get(n, 0)), n))
        yield f"\n## {group}\n"
        yield "| syscall | x86_64 | aarch64 | action | why |"
        yield "|---|---|---|---|---|"
        for n in members:
            yield (f"| `{n}` | {x86.get(n, '—')} | {arm.get(n, '—')} | {actions[n]} | "
                   f"{DECISIONS[n].why} |")


def render(plan: Plan) -> str:
    return _HEADER + "\n".join(rows(derived(plan))) + "\n"


@pytest.fixture(scope="module")
def plan() -> Plan:
    return readme_policy_plan()


def parse(text: str) -> dict[str, tuple[str, str, str, str, str]]:
    """name -> (group, x86_64 nr, aarch64 nr, action, why), from the doc's tables."""
    out = {}
    group = ""
    for line in text.splitlines():
        if line.startswith("## "):
            group = line[3:].strip()
        elif (m := _ROW.match(line)) is not None:
            name, x86, arm, action, why = (part.strip() for part in m.groups())
            assert name not in out, f"{name} is listed twice"
            out[name] = (group, x86, arm, action, why)
    return out


def test_the_doc_lists_every_syscall_with_its_numbers() -> None:
    doc = parse(DOC.read_text())
    x86, arm = ARCHES["x86_64"][0], ARCHES["aarch64"][0]
    assert set(doc) == set(x86) | set(arm)
    for name, (group, x86_nr, arm_nr, _, why) in doc.items():
        assert x86_nr == str(x86.get(name, "—")), name
        assert arm_nr == str(arm.get(name, "—")), name
        assert (group, why) == (DECISIONS[name].group, DECISIONS[name].why), name


def test_the_doc_says_what_the_filter_does(plan: Plan) -> None:
    doc = parse(DOC.read_text())
    wrong = {name: (row[3], action) for name, action in derived(plan).items()
             if (row := doc[name])[3] != action}
    assert wrong == {}, "docs/syscalls.md is stale: python tests/test_syscall_doc.py --write"


def test_the_actions_follow_the_decision_table(plan: Plan) -> None:
    """The filter, the decision table and the doc agree on the kind of answer."""
    expected = {Rule.ALLOW: {"allow"}, Rule.EPERM: {"EPERM"}, Rule.ENOSYS: {"ENOSYS"},
                Rule.IPC: {"EPERM"}}  # allow_sysv_ipc is off in the README policy
    for name, action in derived(plan).items():
        rule = DECISIONS[name].rule
        labels = set(action.split(" / "))
        if rule in expected:
            assert labels == expected[rule], name
        elif rule is Rule.GUARDED:
            assert "guard" in labels, name
        elif name in NET_GUARDED:  # the network guard: only with address rules
            assert labels <= {"allow", "EPERM"}, name
        else:
            assert len(labels) > 1 and "guard" not in labels, name


def test_without_its_guard_a_guarded_call_is_denied(plan: Plan) -> None:
    """The plan as compile_plan made it: a guard the policy lacks is EPERM."""
    doc = parse(DOC.read_text())
    for arch in ARCHES:
        table, audit = ARCHES[arch]
        f = Filter.build(plan.filter_spec(plan.guarded, audit, table))
        for name in GUARDED & set(table):
            want = doc[name][3].replace("guard", "guard" if name in plan.guarded else "EPERM")
            want = describe({ALLOW if x == "allow" else USER_NOTIF if x == "guard"
                             else 0x00050000 | getattr(errno, x) for x in want.split(" / ")})
            assert describe(f.outcomes(name)) == want, (arch, name)


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_syscall_doc.py --write")
    DOC.write_text(render(readme_policy_plan()))
    print(f"wrote {DOC}")
