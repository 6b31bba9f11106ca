"""Pinned names: what a host name in ``net_allow`` adds to a spawn.

    .venv/bin/python benchmarks/bench_pinned.py [--quick] [--backend asyncio|trio]
    setpriv --reuid=65534 --regid=65534 --clear-groups \\
        .venv/bin/python benchmarks/bench_pinned.py     # an unprivileged caller

``await sb.run(["/bin/true"])`` under ``net_allow=["127.0.0.1:8080"]`` (an
address: nothing pinned) against ``["localhost:8080"]`` (a name: the child
sees a synthetic /etc/hosts), each alone and with ``network="loopback"``
(which makes a user namespace of its own for an unprivileged caller: the
pin then shares it), contenders interleaved per round in one process (see
``_common.py``).  A root caller pins with a detached mount the parent makes;
any other caller's child makes a user and mount namespace and writes the
file itself (docs/network.md, "Pinned names").  The name is resolved once,
before the first round: what is timed is the per-run cost.  ``name,
ruleset per run`` builds the run's Landlock ruleset anew each run (one
pinned ruleset serves 64 runs otherwise: ``_pinned._run_ruleset``), to show
what that saves.
"""

from __future__ import annotations

import os
import sys

import anyio

from asyncsandlock import SYSTEM_READABLE, Protection, Sandbox, Subsystem, _pinned

from _common import Bench, Report, banner, interleave, median, parse_args, table

TRUE = ["/bin/true"]


async def run_backend(report: Report, backend: str, rounds: int) -> None:
    def sandbox(rule: str, **kwargs: object) -> Sandbox:
        return Sandbox(fs_readable=SYSTEM_READABLE, net_allow=[rule],
                       **kwargs)  # type: ignore[arg-type]

    policies = {"address": sandbox("127.0.0.1:8080"), "name": sandbox("localhost:8080"),
                "address+loopback": sandbox("127.0.0.1:8080", network="loopback"),
                "name+loopback": sandbox("localhost:8080", network="loopback")}

    def runner(sb: Sandbox, per_run: bool = False) -> Bench:
        async def call() -> object:
            reuse = _pinned.RUNS_PER_RULESET
            if per_run:
                _pinned.RUNS_PER_RULESET = 1
            try:
                result = await sb.run(TRUE)
            finally:
                _pinned.RUNS_PER_RULESET = reuse
            assert result.returncode == 0, result
            return result
        return call

    for name, sb in policies.items():  # resolve the names, and check the pin is on
        pinned = (await sb.run(TRUE)).protections[Subsystem.PINNED_NAMES]
        assert (pinned is Protection.ACTIVE) == name.startswith("name"), (name, pinned)
    contenders = {name: runner(sb) for name, sb in policies.items()}
    contenders["name, ruleset per run"] = runner(sandbox("localhost:8080"), per_run=True)
    samples = await interleave(contenders, rounds)
    who = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
    table(f"run /bin/true by rule, caller {who} ({backend})", samples, "address")
    for base in ("address", "address+loopback"):
        named = base.replace("address", "name")
        added = (median(samples[named]) - median(samples[base])) * 1e3
        report.add(True, f"{backend}, caller {who}: {named} +{added:.3f} ms over {base}")
    saved = (median(samples["name, ruleset per run"]) - median(samples["name"])) * 1e3
    print(f"  one ruleset for 64 runs saves {saved:.3f} ms per run")


def main() -> int:
    args = parse_args("What pinning net_allow's host names adds to a spawn.")
    banner("bench_pinned", args.quick, True)
    rounds = 20 if args.quick else 100
    report = Report()
    for backend in args.backend or ("asyncio", "trio"):
        anyio.run(run_backend, report, backend, rounds, backend=backend)
    report.summary()
    return 0


if __name__ == "__main__":
    sys.exit(main())
