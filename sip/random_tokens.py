"""Random tokens (branches, tags, request ids) from a buffer of the OS's random bytes.

``secrets.token_hex`` asks the kernel for every token: a system call and three
Python calls per Via branch, To tag and audit request id, several of each per
proxied call.  This reads 4 KiB of ``os.urandom`` at a time and hands it out in
slices: the same source and quality, one system call per few hundred tokens.
A forked child starts with an empty buffer, so parent and child never share tokens.
"""

from __future__ import annotations

import os

_REFILL = 4096
_buffer = b""
_pos = 0


def token_bytes(nbytes: int) -> bytes:
    """``nbytes`` random bytes (at most 4096), as ``secrets.token_bytes`` gives."""
    global _buffer, _pos
    if not 0 < nbytes <= _REFILL:
        raise ValueError("between 1 and 4096 bytes")
    end = _pos + nbytes
    if end > len(_buffer):
        _buffer, _pos, end = os.urandom(_REFILL), 0, nbytes
    chunk = _buffer[_pos:end]
    _pos = end
    return chunk


def token_hex(nbytes: int) -> str:
    """``2 * nbytes`` lower-case hex digits, as ``secrets.token_hex`` gives."""
    return token_bytes(nbytes).hex()


def _forget() -> None:
    global _buffer, _pos
    _buffer, _pos = b"", 0


os.register_at_fork(after_in_child=_forget)
