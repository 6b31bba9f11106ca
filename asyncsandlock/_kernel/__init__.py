"""What the kernel offers, and nothing of anyio or of the policy.

Syscall tables (``_syscalls``, ``_sys``), the seccomp BPF assembler and the
per-syscall decision table it compiles (``_bpf``, ``_syscall_policy``: the
baseline every sandbox gets, whatever its fields; what a policy adds reaches
the assembler as :class:`~._bpf.FilterSpec` fields), Landlock rulesets
(``_landlock``), the seccomp user-notification ioctls (``_notify``) and
capabilities (``_caps``).  Everything above imports from here; nothing
here imports from above (``tests/test_imports.py``).
"""
