"""media/relay_plane: what the relay's fast path does that the shared relay tests cannot
see from outside: which packets the C data plane forwarded and which Python routed,
the table after re-INVITEs and deletes, counters and clocks summed, drop log lines.

Cast as tests/test_relay.py: the relay on 127.0.0.1, the caller on 127.0.0.2, the
callee on 127.0.0.3, a stranger on 127.0.0.4.  Waits are bounded; nothing asserts on
time (the plane's clock follows a fake one where a test needs times).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from edge import config
from edge.media import MediaController
from media import _srtp, relay_plane
from media.fastpath import FastPath
from media.latching import DropReason
from media.relay import Leg, MediaRelay
from tests.test_relay import (
    CALLEE,
    CALLER,
    RELAY,
    STRANGER,
    FakeClock,
    FakeSrtp,
    Harness,
    LibSrtp,
    Logs,
    balanced,
    call,
    fast_path_for,
    rtcp_sr,
    rtp,
    small_range,
    to_rtcp,
    to_rtp,
    until,
)

pytestmark = pytest.mark.timeout(30)

SUITE = "AES_CM_128_HMAC_SHA1_80"


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    h = Harness()
    yield h
    h.close()


@pytest.fixture
async def fast_relay() -> AsyncIterator[Callable[..., tuple[MediaRelay, FastPath, Logs]]]:
    made: list[tuple[MediaRelay, FastPath, Logs]] = []

    def make(**kw: Any) -> tuple[MediaRelay, FastPath, Logs]:
        logs = Logs()
        fast = fast_path_for(**kw)
        kw.setdefault("port_range", small_range())
        kw.setdefault("quarantine", 0.0)
        relay = MediaRelay(RELAY, log=logs, fast_path=fast, **kw)
        made.append((relay, fast, logs))
        return relay, fast, logs

    yield make
    for relay, fast, _ in made:
        await relay.close()
        fast.close()


def plane_in(fast: FastPath, leg: Leg) -> int:
    assert leg.handle is not None
    return fast.counters(leg.handle).packets_in


async def test_after_the_first_packet_the_plane_forwards(
    fast_relay: Callable[..., Any], harness: Harness
) -> None:
    relay, fast, _ = fast_relay()
    _, offer, answer, caller, callee = await call(relay, harness)
    assert offer.offloaded and answer.offloaded and len(fast.legs) == 2
    for seq in range(1, 21):
        caller.rtp.send(rtp(seq), to_rtp(offer))
        assert (await callee.rtp.recv())[0] == rtp(seq)
    # The first one proved the source (Python latched it); the plane took the rest.
    await until(lambda: plane_in(fast, offer) + offer.own_counters.packets_in == 20)
    assert offer.own_counters.packets_in >= 1 and plane_in(fast, offer) >= 1
    assert fast.addresses(offer.handle or 0)[0] == caller.rtp.address
    assert offer.counters.packets_in == 20 and answer.counters.packets_out == 20
    assert balanced(offer)


async def test_sdes_srtp_in_the_plane_against_libsrtp_and_its_ssrc_followed(
    fast_relay: Callable[..., Any], harness: Harness
) -> None:
    relay, fast, _ = fast_relay()
    _, offer, answer, caller, callee = await call(relay, harness)
    relay_key, callee_key = random.randbytes(30), random.randbytes(30)
    answer.set_crypto(
        relay.srtp_context(callee_key[:16], callee_key[16:], SUITE, "inbound"),
        relay.srtp_context(relay_key[:16], relay_key[16:], SUITE, "outbound"),
    )
    assert isinstance(answer.inbound, _srtp.Context) and answer.offloaded
    callee_rx, callee_tx = LibSrtp(relay_key, outbound=False), LibSrtp(callee_key, True)
    for seq in range(1, 11):
        caller.rtp.send(rtp(seq), to_rtp(offer))
        assert callee_rx.unprotect_rtp((await callee.rtp.recv())[0]) == rtp(seq)
        ssrc = 0x22 if seq < 6 else 0x33  # the callee restarts its stream
        callee.rtp.send(callee_tx.protect_rtp(rtp(seq, ssrc=ssrc)), to_rtp(answer))
        assert (await caller.rtp.recv())[0] == rtp(seq, ssrc=ssrc)
    caller.rtcp.send(rtcp_sr(tag=1), to_rtcp(offer))
    assert callee_rx.unprotect_rtcp((await callee.rtcp.recv())[0]) == rtcp_sr(tag=1)
    await until(lambda: plane_in(fast, answer) >= 1, "SRTP decrypted in C")
    assert answer.rtp_latch.ssrc == 0x33  # what C accepted, followed by the latch
    # A replay, decided in C, is counted with Python's.
    replayed = callee_tx.protect_rtp(rtp(11, ssrc=0x33))
    callee.rtp.send(replayed, to_rtp(answer))
    callee.rtp.send(replayed, to_rtp(answer))
    await caller.rtp.recv()
    await until(lambda: answer.counters.replays == 1, "the replay")
    assert balanced(answer) and balanced(offer)


async def test_a_transform_not_of_the_c_core_keeps_the_pair_in_python(
    fast_relay: Callable[..., Any], harness: Harness
) -> None:
    relay, fast, _ = fast_relay()
    _, offer, answer, caller, callee = await call(relay, harness)
    answer.set_crypto(inbound=None, outbound=FakeSrtp(0xA5))
    assert not offer.offloaded and not answer.offloaded
    assert fast.addresses(offer.handle or 0) == (None, None, None, None)
    rx = FakeSrtp(0xA5)
    for seq in range(1, 6):
        caller.rtp.send(rtp(seq), to_rtp(offer))
        assert rx.unprotect_rtp((await callee.rtp.recv())[0]) == rtp(seq)
    assert offer.handle is not None
    assert plane_in(fast, offer) == 0 and fast.counters(offer.handle).to_python == 5
    # Plain again: the pair goes back into the plane, latched where Python latched.
    answer.set_crypto(None, None)
    assert offer.offloaded and fast.addresses(offer.handle)[0] == caller.rtp.address
    caller.rtp.send(rtp(6), to_rtp(offer))
    assert (await callee.rtp.recv())[0] == rtp(6)
    assert plane_in(fast, offer) == 1


async def test_rtcp_mux_switch_replugs_the_leg_and_keeps_its_counters(
    fast_relay: Callable[..., Any], harness: Harness
) -> None:
    relay, fast, _ = fast_relay()
    _, offer, answer, caller, callee = await call(relay, harness)
    for seq in range(1, 4):
        caller.rtp.send(rtp(seq), to_rtp(offer))
        await callee.rtp.recv()
    old = offer.handle
    assert await offer.set_rtcp_mux(True)
    assert offer.handle != old or offer.handle in fast.legs
    assert offer.counters.packets_in == 3  # the old entry's counters are Python's now
    caller.rtp.send(rtcp_sr(tag=4), to_rtp(offer))  # RTCP on the RTP port now
    assert (await callee.rtcp.recv())[0] == rtcp_sr(tag=4)
    assert await offer.set_rtcp_mux(False)
    caller.rtcp.send(rtcp_sr(tag=5), to_rtcp(offer))
    assert (await callee.rtcp.recv())[0] == rtcp_sr(tag=5)
    assert offer.counters.rtcp_in == 2 and len(fast.legs) == 2
    assert balanced(offer) and answer.offloaded


async def test_delete_empties_the_table_and_the_totals_keep_the_planes_counts(
    fast_relay: Callable[..., Any], harness: Harness
) -> None:
    relay, fast, _ = fast_relay()
    session, offer, _, caller, callee = await call(relay, harness)
    for seq in range(1, 11):
        caller.rtp.send(rtp(seq), to_rtp(offer))
        await callee.rtp.recv()
    await until(lambda: plane_in(fast, offer) + offer.own_counters.packets_in == 10)
    assert await relay.delete_session(session.call_id)
    assert fast.legs == frozenset() and relay.legs_by_handle == {}
    stats = relay.stats()
    assert stats["packets_in"] == 10 and stats["packets_out"] == 10 and stats["legs"] == 0


async def test_drops_in_the_plane_are_logged_with_their_source(
    fast_relay: Callable[..., Any], harness: Harness
) -> None:
    relay, _, logs = fast_relay()
    session, offer, _, caller, callee = await call(relay, harness)
    caller.rtp.send(rtp(1), to_rtp(offer))
    await callee.rtp.recv()
    caller.rtp.send(rtp(2)[:11], to_rtp(offer))  # too short: decided in C
    caller.rtp.send(rtp(3), to_rtp(offer))
    await callee.rtp.recv()
    assert offer.counters.drops[DropReason.TOO_SHORT] == 1
    await relay.delete_session(session.call_id)  # the last look at the plane's drops
    (line,) = [f for f in logs.events("media_drop") if f["reason"] == "too_short"]
    assert line["source"] == "{}:{}".format(*caller.rtp.address)


async def test_last_packet_is_the_planes_on_the_relays_clock(
    fast_relay: Callable[..., Any], harness: Harness
) -> None:
    clock = FakeClock()
    relay, fast, _ = fast_relay(clock=clock)
    session, offer, _, caller, callee = await call(relay, harness)
    caller.rtp.send(rtp(1), to_rtp(offer))  # punted: Python stamps it
    await callee.rtp.recv()
    assert offer.last_packet == clock.now
    clock.now += 50
    caller.rtp.send(rtp(2), to_rtp(offer))  # in C: the plane stamps it
    await callee.rtp.recv()
    await until(lambda: plane_in(fast, offer) == 1)
    assert offer.last_packet == pytest.approx(clock.now)
    assert not session.media_timeout(clock.now + 59, 60)
    assert session.media_timeout(clock.now + 60, 60)


async def test_strangers_never_reach_the_plane_table(
    fast_relay: Callable[..., Any], harness: Harness
) -> None:
    relay, fast, _ = fast_relay()
    _, offer, _, caller, callee = await call(relay, harness)
    stranger = await harness.endpoint(STRANGER)
    for seq in range(1, 6):
        stranger.send(rtp(seq), to_rtp(offer))
    await until(lambda: offer.counters.drops[DropReason.UNKNOWN_SOURCE] == 5)
    assert fast.addresses(offer.handle or 0)[0] is None  # nothing latched
    caller.rtp.send(rtp(1), to_rtp(offer))
    assert (await callee.rtp.recv())[0] == rtp(1)
    assert fast.addresses(offer.handle or 0)[0] == caller.rtp.address
    assert callee.rtp.pending() == [] and offer.rtp_latch.latched[0] == CALLER  # type: ignore[index]


async def test_a_natted_phones_sip_source_keeps_its_punts_through_a_spray(
    harness: Harness,
) -> None:
    """A phone behind a NAT names a private address in its SDP; its media comes from
    the IP its SIP came from.  The relay writes that IP into the plane as the leg's
    endpoint host, so while a stranger has spent the leg's strangers' punt budget,
    the phone's first RTP still reaches Python, proves itself by that IP (NAT
    latching) and is forwarded."""
    fast = FastPath(1, punt_rate=1.0, punt_burst=20.0)
    fast.start()
    relay = MediaRelay(RELAY, log=Logs(), fast_path=fast, port_range=small_range(), quarantine=0)
    try:
        session = await relay.create_session("natted")
        offer = await session.add_leg("offer")
        answer = await session.add_leg("answer")
        caller, callee = await harness.phone(CALLER), await harness.phone(CALLEE)
        offer.set_remote("127.0.0.9", 4000, sip_source=CALLER)  # its private address
        callee.signal(answer)
        assert offer.offloaded and offer.handle is not None
        stranger = await harness.endpoint(STRANGER)
        for seq in range(60):
            stranger.send(rtp(seq), to_rtp(offer))
        handle = offer.handle
        await until(lambda: fast.counters(handle).drops["punt_limited"] >= 40)
        caller.rtp.send(rtp(1), to_rtp(offer))
        assert (await callee.rtp.recv())[0] == rtp(1)
        assert offer.rtp_latch.latched == caller.rtp.address
    finally:
        await relay.close()
        fast.close()


async def test_the_controller_makes_and_closes_the_plane_or_says_why_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def cfg(fast_path: bool) -> config.Config:
        media = config.MediaConfig(
            address=RELAY, port_range=small_range(), quarantine=0.0, fast_path=fast_path
        )
        return config.Config(media=media)

    logs = Logs()
    media = MediaController(cfg(True), log=logs)
    await media.start()
    assert media.relay is not None and media.relay.fast_path is media.fast_path
    assert media.fast_path is not None
    (ready,) = logs.events("media_ready")
    assert ready["fast_path"] and ready["loops"] == media.fast_path.loops
    plane = media.fast_path
    await media.close()
    with pytest.raises(RuntimeError):
        plane.counters(0)  # closed with the controller

    off = MediaController(cfg(False))
    assert off.relay is not None and off.relay.fast_path is None
    await off.close()

    # Where the plane cannot run: one loud line, and Python forwards.
    monkeypatch.setattr(relay_plane, "UNAVAILABLE", "media._srtp was built without it")
    logs = Logs()
    fallback = MediaController(cfg(True), log=logs)
    await fallback.start()
    assert fallback.relay is not None and fallback.relay.fast_path is None
    (warning,) = logs.events("media_fast_path_unavailable")
    assert warning["problem"] == "media._srtp was built without it"
    assert [level for level, e, _ in logs.lines if e == "media_fast_path_unavailable"] == [
        "warning"
    ]
    await fallback.close()
