"""``probe()``: what this host supports, found by trying it.

On this host everything is there; the refusals are produced for real by
running the probe under ``tests/helpers/refuse.c`` (see test_unavailable.py).
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import json
import os
import platform
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

import asyncsandlock
from asyncsandlock import Capabilities, Subsystem, _features, probe

from conftest import PYTHON, build_helper

# Prints probe()'s answers, on the backend named in argv[1], as JSON.
PROBE = r"""
import dataclasses, json, sys
import anyio
import asyncsandlock

async def main():
    caps = await asyncsandlock.probe()
    out = {}
    for f in dataclasses.fields(caps):
        value = getattr(caps, f.name)
        out[f.name] = value.errno if hasattr(value, "available") else value
    out["under_listener"] = caps.under_listener
    out["under_seccomp"] = caps.under_seccomp
    out["refusals"] = sorted(sub.name for sub in caps.refusals())
    print(json.dumps(out))

anyio.run(main, backend=sys.argv[1])
"""


@pytest.fixture(scope="module")
def refuse() -> str:
    return build_helper("refuse")


def probe_under(refuse: str, rules: list[str], backend: str) -> dict[str, Any]:
    proc = subprocess.run([refuse, *rules, "--", PYTHON, "-c", PROBE, backend],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout)
    return report


@pytest.fixture
def fresh_probe() -> Iterator[None]:
    """Forget the cached answers, so the probe really runs in this test."""
    saved = _features._cached
    _features._cached = None
    _features.seccomp_trials.cache_clear()
    yield
    _features._cached = saved


def landlock_abi() -> int | None:
    """The ABI as the kernel reports it, asked without the library."""
    libc = ctypes.CDLL(None, use_errno=True)
    abi = int(libc.syscall(444, None, 0, 1))  # landlock_create_ruleset(NULL, 0, VERSION)
    return abi if abi > 0 else None


def seccomp_status() -> tuple[int, int]:
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    return int(fields["Seccomp"]), int(fields["Seccomp_filters"])


def kernel() -> tuple[int, int]:
    major, minor = platform.release().split(".")[:2]
    return int(major), int(minor)


@pytest.mark.anyio
async def test_probe_on_this_host(fresh_probe: None, no_leaks: None) -> None:
    caps = await probe()
    assert caps.landlock_abi == landlock_abi()
    assert caps.landlock.available == (caps.landlock_abi is not None)
    assert (caps.seccomp_mode, caps.seccomp_filters) == seccomp_status()
    assert caps.under_seccomp == (seccomp_status()[0] != 0)
    # This host runs the tests outside any sandbox, on a recent kernel.
    assert caps.seccomp_filter and caps.user_notification and caps.pidfd and caps.clone3
    assert not caps.under_listener
    assert bool(caps.sync_wake_up) == (kernel() >= (6, 6))
    if os.geteuid() == 0:
        assert caps.network_namespace and caps.user_namespace
    assert caps.refusals() == {}


@pytest.mark.anyio
async def test_probe_is_cached(no_leaks: None) -> None:
    first = await probe()
    assert await probe() is first


def test_capabilities_is_a_frozen_record() -> None:
    assert asyncsandlock.Capabilities is Capabilities
    assert asyncsandlock.probe is probe
    fields = {f.name for f in dataclasses.fields(Capabilities)}
    assert {"landlock_abi", "landlock", "seccomp_filter", "user_notification", "sync_wake_up",
            "pidfd", "clone3", "user_namespace", "network_namespace", "seccomp_mode",
            "seccomp_filters"} <= fields
    caps = Capabilities(**{name: None for name in fields})  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        caps.landlock_abi = 3  # type: ignore[misc]


def test_support_reads_well() -> None:
    assert str(_features.Support()) == "yes"
    assert str(_features.Support(detail="ABI 7")) == "yes (ABI 7)"
    missing = _features.Support(errno.ENOSYS)
    assert not missing and str(missing) == "no (ENOSYS: Function not implemented)"


def test_probe_under_gvisor_like_and_nested_refusals(refuse: str, anyio_backend: str) -> None:
    caps = probe_under(refuse, ["landlock_create_ruleset=ENOSYS", "seccomp-listener=EBUSY",
                                "unshare=EPERM", "clone3=ENOSYS", "pidfd_open=ENOSYS"],
                       anyio_backend)
    assert (caps["landlock_abi"], caps["landlock"]) == (None, errno.ENOSYS)
    assert caps["seccomp_filter"] is None  # a plain filter is still accepted
    assert caps["user_notification"] == errno.EBUSY
    assert caps["under_listener"] is True and caps["under_seccomp"] is True
    assert caps["sync_wake_up"] is not None
    assert caps["user_namespace"] == caps["network_namespace"] == errno.EPERM
    assert caps["clone3"] == caps["pidfd"] == errno.ENOSYS
    assert caps["seccomp_mode"] == 2 and caps["seccomp_filters"] >= 1
    assert caps["refusals"] == [Subsystem.LANDLOCK.name]


def test_probe_when_the_listener_flag_is_invalid(refuse: str, anyio_backend: str) -> None:
    caps = probe_under(refuse, ["seccomp-listener=EINVAL"], anyio_backend)
    assert caps["user_notification"] == errno.EINVAL
    assert caps["under_listener"] is False and caps["under_seccomp"] is True
    assert caps["seccomp_filter"] is None and caps["landlock"] is None
    assert caps["refusals"] == []  # a default sandbox needs no supervisor


def test_probe_without_seccomp(refuse: str, anyio_backend: str) -> None:
    caps = probe_under(refuse, ["seccomp=EINVAL"], anyio_backend)
    assert caps["seccomp_filter"] == errno.EINVAL
    assert caps["user_notification"] is not None
    assert caps["user_namespace"] is None  # still probed, without a filter
    assert caps["refusals"] == [Subsystem.SECCOMP.name]
