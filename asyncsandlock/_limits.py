"""The resource-limit fields of a policy: validation, and what a run needs of them.

``max_memory``, ``max_cpu``, ``cpu_time``, ``cpu_cores``, ``max_threads``,
``max_output`` and ``on_output_limit`` are all for the whole sandbox (all its
processes together).  How each is enforced is told in ``docs/limits.md``:
``max_threads`` by the supervisor (``handlers/process_limit.py``),
``cpu_cores`` by the affinity the child sets on itself at spawn (step
``cpus``, inherited by all it starts), ``max_output`` by
the run's readers (``_run.py``), and the rest by the watcher (``_watch.py``),
which samples the sandbox's process group from the caller's event loop.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from ._cgroup import kernel_memory
from ._exceptions import PolicyError
from ._types import Protection
from ._validate import check_positive, parse_size, show
from ._watch import Watched

if TYPE_CHECKING:
    from ._policy import Sandbox


#: ``on_output_limit`` values.
OUTPUT_LIMIT_ACTIONS = ("truncate", "kill")


def _real(value: object) -> float:
    """``value`` as a float, or NaN if it is not a number (a bool is not)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        with contextlib.suppress(OverflowError):  # an int beyond any float stays NaN
            return float(value)
    return math.nan


def _seconds(name: str, value: object) -> float | None:
    if value is None:
        return None
    seconds = _real(value)
    # "not > 0" rather than "<= 0": NaN compares false both ways.
    if not (seconds > 0 and math.isfinite(seconds)):
        raise PolicyError(name, f"{show(value)} must be a positive, finite number of seconds, "
                                "or None")
    return seconds


def _percent(name: str, value: object) -> float | None:
    """A share of one core in percent: above 0, at most 100 per core the
    caller may run on (more could never be used, so it limits nothing)."""
    if value is None:
        return None
    top = 100 * len(os.sched_getaffinity(0))
    share = _real(value)
    if not 0 < share <= top:
        raise PolicyError(name, f"{show(value)} must be a percentage of one core above 0 and "
                                f"at most {top} (100 per core this process may use)")
    return share


def _cores(name: str, value: object) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise PolicyError(name, f"expected a sequence of CPU numbers, got {show(value)}")
    usable = os.sched_getaffinity(0)
    cores: list[int] = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int):
            raise PolicyError(name, f"{show(item)} is not a CPU number")
        if item not in usable:
            raise PolicyError(name, f"CPU {show(item)} does not exist or is not one this "
                                    f"process may use (those are {sorted(usable)})")
        if item not in cores:
            cores.append(item)
    if not cores:
        raise PolicyError(name, "an empty set of CPUs would let nothing run; use None for any")
    return tuple(cores)


def check_limits(policy: Sandbox, put: Callable[[object, str, object], None]) -> None:
    """Validate and normalize ``policy``'s limit fields (``max_memory`` is
    parsed where it always was, in ``Sandbox.__post_init__``)."""
    put(policy, "max_cpu", _percent("max_cpu", policy.max_cpu))
    put(policy, "cpu_time", _seconds("cpu_time", policy.cpu_time))
    put(policy, "cpu_cores", _cores("cpu_cores", policy.cpu_cores))
    put(policy, "max_threads", check_positive("max_threads", policy.max_threads))
    if policy.max_output is not None:
        put(policy, "max_output", parse_size("max_output", policy.max_output))
    if policy.on_output_limit not in OUTPUT_LIMIT_ACTIONS:
        raise PolicyError("on_output_limit", f"{show(policy.on_output_limit)} must be one of "
                                             f"{', '.join(map(repr, OUTPUT_LIMIT_ACTIONS))}")


def watched(policy: Sandbox, in_cgroup: bool = False) -> Watched | None:
    """What the watcher (``_watch.py``) must enforce for ``policy``, or None;
    ``in_cgroup``: its ``max_memory`` is the kernel's (``_cgroup.py``)."""
    memory = None if in_cgroup else policy.max_memory
    if memory is None and policy.cpu_time is None and policy.max_cpu is None:
        return None
    cores = len(policy.cpu_cores) if policy.cpu_cores else len(os.sched_getaffinity(0))
    return Watched(None if memory is None else int(memory),
                   None if policy.cpu_time is None else float(policy.cpu_time),
                   None if policy.max_cpu is None else float(policy.max_cpu) / 100, cores)


def huge_pages_off(policy: Sandbox) -> bool:
    """Whether ``policy``'s children run with transparent huge pages off.

    Under ``max_memory``: a process given huge pages (``MADV_HUGEPAGE``,
    or THP "always") fills memory several times faster than with 4 KiB
    pages, faster than the watcher's looks assume (``_watch.GROWTH``), and
    would pass its budget by up to its headroom before it is seen.  The C
    core sets ``PR_SET_THP_DISABLE`` for the child (``csrc/spawn.c``,
    step ``thp``): inherited by every process it starts and kept across
    ``execve``; the filter refuses turning it back on (``_kernel/_bpf.py``).
    """
    return policy.max_memory is not None


def limits_protection(policy: Sandbox) -> Protection:
    """How ``policy``'s watched limits are enforced: :attr:`Protection.SAMPLED`
    (the watcher), ACTIVE when its one limit is ``max_memory`` in a cgroup
    (``_cgroup.py``), or NOT_REQUESTED when it has none."""
    if policy.max_memory is None and policy.cpu_time is None and policy.max_cpu is None:
        return Protection.NOT_REQUESTED
    if (policy.cpu_time is None and policy.max_cpu is None
            and kernel_memory(policy.max_memory, policy.memory_mechanism)):
        return Protection.ACTIVE
    return Protection.SAMPLED


