"""sip/random_tokens.py: buffered OS randomness for branches, tags and request ids."""

from __future__ import annotations

import os
import re

import pytest

from sip import random_tokens
from sip.random_tokens import token_bytes, token_hex
from sip.transaction import MAGIC_COOKIE, new_branch


def test_tokens_have_the_asked_length_and_never_repeat() -> None:
    seen = set()
    for n in (1, 6, 16, 32):
        for _ in range(2000):  # crosses several 4 KiB refills
            t = token_hex(n)
            assert re.fullmatch(f"[0-9a-f]{{{2 * n}}}", t)
            seen.add(t)
    # 6000 tokens of 6+ bytes: a repeat would mean the buffer is handed out twice.
    assert len(seen) >= 6000
    assert len(token_bytes(4096)) == 4096


def test_branches_keep_the_magic_cookie_and_128_bits() -> None:
    b = new_branch()
    assert b.startswith(MAGIC_COOKIE) and len(b) == len(MAGIC_COOKIE) + 32


@pytest.mark.parametrize("n", [0, -1, 4097])
def test_out_of_range_sizes_are_refused(n: int) -> None:
    with pytest.raises(ValueError):
        token_bytes(n)


def test_a_forked_child_does_not_reuse_the_parents_buffer() -> None:
    token_hex(8)  # the parent's buffer is filled
    assert random_tokens._POOL.buffer
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next token, exit at once
        os.close(r)
        os.write(w, token_hex(16).encode())
        os._exit(0)
    os.close(w)
    child = os.read(r, 64).decode()
    os.close(r)
    os.waitpid(pid, 0)
    assert child != token_hex(16)
    assert re.fullmatch("[0-9a-f]{32}", child)
