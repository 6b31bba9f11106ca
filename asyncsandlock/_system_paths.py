"""``SYSTEM_READABLE``: what programs need from the system to start and work.

``/etc`` is not granted whole.  A root caller (most containers) runs its
child as uid 0 without capabilities, and uid 0 owns ``/etc/shadow``: with
``/etc`` readable, ``head /etc/shadow`` would work inside.  So ``/etc``
contributes the files that the loader, the C library, TLS, the shells and
the common runtimes read, and none of the secrets kept beside them
(``shadow``, ``gshadow``, ``sudoers``, ssh host keys, ``ssl/private``,
credentials such as ``npmrc`` or proxy settings in ``environment``,
``machine-id``); ``/root`` is never in it.  Each entry is granted only where it exists on this host.
"""

from __future__ import annotations

import glob
import os

#: Whole trees: programs and their libraries.
_TREES = ("/usr", "/lib", "/lib64", "/lib32", "/libx32", "/bin", "/sbin")

#: Entries of /etc, by what reads them.
_ETC = (
    # the dynamic loader
    "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "ld.so.preload",
    # the C library: users, groups, names, services, time, locale
    "passwd", "group", "nsswitch.conf", "hosts", "host.conf", "resolv.conf", "gai.conf",
    "hostname", "networks", "protocols", "services", "rpc", "ethertypes", "localtime",
    "timezone", "locale.alias", "locale.conf", "default/locale",
    # TLS: certificates and library configuration, not private keys
    "ssl/certs", "ssl/openssl.cnf", "ca-certificates", "ca-certificates.conf",
    "pki/tls/certs", "pki/tls/openssl.cnf", "pki/ca-trust", "crypto-policies",
    # what programs ask about the system and its files
    "os-release", "lsb-release", "debian_version", "alternatives", "mime.types", "magic",
    "magic.mime", "mailcap", "terminfo", "shells", "fonts", "xdg",
    # shells and common runtimes
    "profile", "profile.d", "bash.bashrc", "inputrc", "python3*",
    "pip.conf", "gitconfig", "java-*", "perl", "vim", "nanorc",
)


def system_readable() -> tuple[str, ...]:
    """The entries of :data:`SYSTEM_READABLE` that exist here, in order."""
    found = [tree for tree in _TREES if os.path.exists(tree)]
    for entry in _ETC:
        found.extend(sorted(glob.glob(os.path.join("/etc", entry))))
    return tuple(found)
