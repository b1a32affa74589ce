"""Random tokens (branches, tags, request ids) from a buffer of the OS's random bytes.

``secrets.token_hex`` asks the kernel for every token: a system call and three
Python calls per Via branch, To tag and audit request id, several of each per
proxied call.  This reads 4 KiB of ``os.urandom`` at a time and hands it out in
slices: the same source and quality, one system call per few hundred tokens.
A forked child starts with an empty buffer, so parent and child never share tokens.
"""

from __future__ import annotations

import os
from typing import Final

_REFILL: Final = 4096


class _Pool:
    """The buffer and how much of it is handed out.  A module-level Final
    instance rather than two rebound globals: compiled, its fields are read
    directly instead of looked up in the module's dict on every token."""

    __slots__ = ("buffer", "pos")

    def __init__(self) -> None:
        self.buffer = b""
        self.pos = 0


_POOL: Final = _Pool()


def token_bytes(nbytes: int) -> bytes:
    """``nbytes`` random bytes (at most 4096), as ``secrets.token_bytes`` gives."""
    if not 0 < nbytes <= _REFILL:
        raise ValueError("between 1 and 4096 bytes")
    pool = _POOL
    pos = pool.pos
    end = pos + nbytes
    if end > len(pool.buffer):
        pool.buffer, pos, end = os.urandom(_REFILL), 0, nbytes
    pool.pos = end
    return pool.buffer[pos:end]


def token_hex(nbytes: int) -> str:
    """``2 * nbytes`` lower-case hex digits, as ``secrets.token_hex`` gives."""
    return token_bytes(nbytes).hex()


def _forget() -> None:
    _POOL.buffer, _POOL.pos = b"", 0


os.register_at_fork(after_in_child=_forget)
