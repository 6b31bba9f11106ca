"""Policy profiles: TOML files whose keys are :class:`Sandbox` fields.

A profile names policy fields at its top level (``fs_readable = [...]``,
``max_memory = "512M"``), may ``extends`` another profile (a built-in name or
a path relative to the file), and may hold the run settings a policy has no
field for: ``timeout`` and an ``[mcp]`` table for the server.  The keys are
checked against the fields of :class:`Sandbox` itself, so a field added to the
policy is a profile key with no change here; every value goes through the
policy's own validation, so a bad one is the same :class:`PolicyError`.

sandlock's sectioned format (``[filesystem] read = [...]``, ``[limits]
memory = ...``) is read too, each key mapped to the field of the same meaning,
so that a file written for sandlock works here unchanged where the fields
agree.  A sandlock key whose field this version lacks is refused by name.

Two tokens stand for host paths in path lists: ``"@system"`` for
:data:`SYSTEM_READABLE`, ``"@python"`` for this interpreter's installation
(``sys.base_prefix`` and ``sys.prefix``); ``${HOME}`` and ``~`` are expanded.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from ._exceptions import PolicyError
from ._refusal import allow_degraded, strict
from ._system_paths import system_readable
from ._types import Subsystem
from ._validate import show

#: sandlock's ``[section] key`` -> our field.  Where the field does not exist
#: in this version the key is refused by name (see :func:`_sandlock_fields`).
SANDLOCK_KEYS: Final[Mapping[tuple[str, str], str]] = MappingProxyType({
    ("filesystem", "read"): "fs_readable",
    ("filesystem", "write"): "fs_writable",
    ("filesystem", "deny"): "fs_denied",
    ("network", "allow"): "net_allow",
    ("network", "allow_bind"): "net_allow_bind",
    ("program", "env"): "env",
    ("program", "cwd"): "cwd",
    ("program", "clean_env"): "clean_env",
    ("program", "uid"): "uid",
    ("program", "gid"): "gid",
    ("program", "no_coredump"): "no_coredump",
    ("syscalls", "extra_deny"): "extra_deny_syscalls",
    ("limits", "memory"): "max_memory",
    ("limits", "processes"): "max_processes",
    ("limits", "open_files"): "max_open_files",
    ("limits", "cpu"): "max_cpu",
    ("config", "workdir"): "workdir",
})
_SANDLOCK_SECTIONS: Final = frozenset(section for section, _ in SANDLOCK_KEYS) | {
    "determinism", "http"}

#: Keys a profile may hold that are not policy fields.
_RUN_KEYS: Final = frozenset({"extends", "description", "timeout", "mcp"})
#: Policy fields a TOML file cannot express (they hold Python objects).
_CODE_ONLY: Final = frozenset({"handlers"})
_PATH_FIELDS: Final = frozenset({"fs_readable", "fs_writable", "fs_denied"})


@dataclass(frozen=True, slots=True)
class Profile:
    """A loaded profile: the policy fields it sets, and its run settings."""

    #: The built-in name or the file it came from.
    source: str
    #: Policy fields, as :class:`Sandbox` takes them (``on_unavailable`` a callable).
    fields: Mapping[str, Any]
    #: Default ``timeout`` (seconds) for runs under this profile.
    timeout: float | None = None
    #: The ``[mcp]`` table: settings of the MCP server (see ``docs/mcp.md``).
    mcp: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    description: str = ""

    def sandbox(self, **overrides: Any) -> Any:
        """The :class:`Sandbox` of this profile, with ``overrides`` replacing its fields."""
        from ._policy import Sandbox

        check_keys(overrides, source="overrides")
        return Sandbox(**{**self.fields, **overrides})


def sandbox_fields() -> frozenset[str]:
    """The names of :class:`Sandbox`'s fields, read from the dataclass."""
    from ._policy import Sandbox

    return frozenset(f.name for f in dataclasses.fields(Sandbox))


def check_keys(keys: Mapping[str, Any], *, source: str) -> None:
    """PolicyError naming the first key that is not a :class:`Sandbox` field."""
    known = sandbox_fields()
    for key in keys:
        if key not in known:
            raise PolicyError(key, f"unknown policy field in {source}")


def builtin_names() -> tuple[str, ...]:
    """The names of the profiles shipped with asyncsandlock."""
    folder = importlib.resources.files("asyncsandlock") / "profiles"
    return tuple(sorted(entry.name.removesuffix(".toml") for entry in folder.iterdir()
                        if entry.name.endswith(".toml")))


def load_profile(name_or_path: str | os.PathLike[str]) -> Profile:
    """Load a built-in profile by name, or a TOML file by path.

    A string with a ``/`` or ending in ``.toml`` is a path; anything else a
    built-in name (:func:`builtin_names`).

    :raises PolicyError: unknown name, unreadable or invalid file, unknown
        key or invalid value (``field`` names it).
    """
    return _load(name_or_path, base=None, seen=())


def _locate(name_or_path: str | os.PathLike[str], base: str | None) -> tuple[str, str]:
    """(source label, TOML text)."""
    text_name = os.fspath(name_or_path)
    if not isinstance(text_name, str):
        raise PolicyError("profile", f"{show(name_or_path)} is not a name or path")
    if "/" in text_name or text_name.endswith(".toml"):
        path = os.path.expanduser(text_name)
        if base is not None and not os.path.isabs(path):
            path = os.path.join(base, path)
        path = os.path.abspath(path)
        try:
            # Profiles are read when a policy is built, before any event loop
            # work: a small local file, read synchronously.
            with open(path, encoding="utf-8") as f:
                return path, f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise PolicyError("profile", f"cannot read {path}: {exc}") from None
    resource = importlib.resources.files("asyncsandlock") / "profiles" / f"{text_name}.toml"
    if not resource.is_file():
        raise PolicyError("profile", f"no built-in profile {text_name!r} (built-ins: "
                                     f"{', '.join(builtin_names())}; a file path needs a '/')")
    return text_name, resource.read_text(encoding="utf-8")


def _load(name_or_path: str | os.PathLike[str], *, base: str | None,
          seen: tuple[str, ...]) -> Profile:
    source, text = _locate(name_or_path, base)
    if source in seen:
        raise PolicyError("extends", f"a cycle: {' -> '.join((*seen, source))}")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError("profile", f"{source}: {exc}") from None
    raw = _sandlock_fields(data, source)
    raw.update({k: v for k, v in data.items()
                if k not in _SANDLOCK_SECTIONS or _our_field(k, v)})
    parent: Profile | None = None
    extends = raw.pop("extends", None)
    if extends is not None:
        if not isinstance(extends, str):
            raise PolicyError("extends", f"{show(extends)} in {source} is not a name or path")
        here = os.path.dirname(source) if os.path.isabs(source) else None
        parent = _load(extends, base=here, seen=(*seen, source))
    timeout = raw.pop("timeout", parent.timeout if parent else None)
    if timeout is not None and (isinstance(timeout, bool)
                                or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise PolicyError("timeout", f"{show(timeout)} in {source} is not a positive number")
    mcp = raw.pop("mcp", {})
    if not isinstance(mcp, dict):
        raise PolicyError("mcp", f"[mcp] in {source} must be a table")
    description = raw.pop("description", parent.description if parent else "")
    for key in raw:
        if key in _CODE_ONLY:
            raise PolicyError(key, f"{source}: {key} cannot be given in a profile; pass them "
                                   "in code (Sandbox.from_profile(..., handlers=[...]))")
    check_keys(raw, source=source)
    fields = dict(parent.fields) if parent else {}
    fields.update(_convert(key, value, source) for key, value in raw.items())
    profile = Profile(source=source, fields=MappingProxyType(fields),
                      timeout=None if timeout is None else float(timeout),
                      mcp=MappingProxyType({**(parent.mcp if parent else {}), **mcp}),
                      description=str(description))
    profile.sandbox()  # every value through the policy's own checks, now
    return profile


def _our_field(key: str, value: object) -> bool:
    """Whether ``key``, also the name of a sandlock section, is our field of
    that name: ``network = "loopback"`` is ``Sandbox.network``, while
    ``[network]`` is sandlock's table of rules (one file has one or the other)."""
    return not isinstance(value, dict) and key in sandbox_fields()


def _sandlock_fields(data: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The policy fields of sandlock's sections in ``data``."""
    known = sandbox_fields()
    out: dict[str, Any] = {}
    for section in _SANDLOCK_SECTIONS & data.keys():
        table = data[section]
        if _our_field(section, table):
            continue
        if not isinstance(table, dict):
            raise PolicyError(section, f"[{section}] in {source} must be a table")
        for key, value in table.items():
            field = SANDLOCK_KEYS.get((section, key))
            if field is None:
                raise PolicyError(f"{section}.{key}",
                                  f"sandlock's key in {source} has no asyncsandlock equivalent")
            if field not in known:
                raise PolicyError(f"{section}.{key}", f"{source}: maps to {field}, which this "
                                                      "version of asyncsandlock does not have")
            out[field] = value
    return out


def _expand_paths(field: str, value: object, source: str) -> object:
    if not isinstance(value, list):
        return value  # the policy's check names the field and the type
    out: list[object] = []
    for item in value:
        if item == "@system":
            out.extend(system_readable())
        elif item == "@python":
            out.extend(dict.fromkeys((sys.base_prefix, sys.prefix)))
        elif isinstance(item, str):
            out.append(os.path.expanduser(item.replace("${HOME}", os.environ.get("HOME", "~"))))
        else:
            out.append(item)
    return out


def _on_unavailable(value: object, source: str) -> Any:
    """``"strict"`` or a list of subsystem names to run without."""
    if value == "strict":
        return strict
    if isinstance(value, list):
        try:
            return allow_degraded(*(Subsystem(item) for item in value))
        except (ValueError, TypeError):
            pass
    names = ", ".join(s.value for s in Subsystem)
    raise PolicyError("on_unavailable", f"{show(value)} in {source}: give \"strict\" or a "
                                        f"list of subsystems to run without ({names})")


def _convert(key: str, value: Any, source: str) -> tuple[str, Any]:
    if key in _PATH_FIELDS:
        return key, _expand_paths(key, value, source)
    if key == "on_unavailable":
        return key, _on_unavailable(value, source)
    return key, value


def describe(profile: Profile) -> str:
    """The effective policy of ``profile`` as TOML-like text, one field a line."""
    sandbox = profile.sandbox()
    lines = [f"# profile {profile.source}"]
    if profile.description:
        lines.append(f"# {profile.description}")
    for f in dataclasses.fields(sandbox):
        value = getattr(sandbox, f.name)
        if isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, Mapping):
            value = dict(value)
        elif callable(value):
            value = getattr(value, "__name__", repr(value))
        lines.append(f"{f.name} = {value!r}")
    lines.append(f"timeout = {profile.timeout!r}")
    for key, value in profile.mcp.items():
        lines.append(f"mcp.{key} = {value!r}")
    return "\n".join(lines)
