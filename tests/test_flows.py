"""Flow tokens (edge/flows.py): authentic, bound to a connection and its peer."""

from __future__ import annotations

from edge import flows
from edge.flows import FlowTokens

PEER = ("127.0.0.2", 40000)


def test_a_token_names_its_live_connection() -> None:
    tokens = FlowTokens(b"k" * 32)
    token = tokens.make(7, PEER)
    assert token.startswith("ft7x")
    assert tokens.check(token, {7: PEER}.get) == 7


def test_a_token_for_another_peer_or_a_closed_connection_is_refused() -> None:
    tokens = FlowTokens(b"k" * 32)
    token = tokens.make(7, PEER)
    # The connection id was reused by a connection from somewhere else.
    assert tokens.check(token, {7: ("127.0.0.3", 40000)}.get) is None
    assert tokens.check(token, {7: (PEER[0], 40001)}.get) is None
    assert tokens.check(token, {}.get) is None
    # ... and the remembered tag of the old peer does not vouch for the new one.
    assert tokens.check(tokens.make(7, ("127.0.0.3", 40000)), {7: PEER}.get) is None
    assert tokens.check(token, {7: PEER}.get) == 7


def test_forged_and_malformed_tokens_are_refused() -> None:
    tokens = FlowTokens(b"k" * 32)
    token = tokens.make(7, PEER)
    live = {7: PEER, 8: PEER}.get
    forged = token[:-1] + ("0" if token[-1] != "0" else "1")
    assert tokens.check(forged, live) is None
    assert tokens.check(token.replace("ft7x", "ft8x"), live) is None
    assert tokens.check(FlowTokens(b"j" * 32).make(7, PEER), live) is None
    for bad in ("", "ft", "ftx", "ft7", "fx7xabc", "ft-7xabc", "ft" + "9" * 13 + "xabc"):
        assert tokens.check(bad, live) is None


def test_the_remembered_tags_are_bounded() -> None:
    tokens = FlowTokens(b"k" * 32)
    made = {n: tokens.make(n, PEER) for n in range(flows._TAGS_KEPT + 10)}
    assert len(tokens._tags) <= flows._TAGS_KEPT
    live = dict.fromkeys(made, PEER).get
    # Forgotten or not, every token still checks out.
    assert all(tokens.check(token, live) == n for n, token in made.items())
