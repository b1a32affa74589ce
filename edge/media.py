"""The proxy's media controller: SDP offers and answers in, relay legs set up, rewritten
SDP out.

    media = MediaController(config, log=log)
    await media.start()
    body = await media.offer(call, "caller", body, from_policy="as-offered",
                             to_policy="rtp", source_ip="192.0.2.10")
    body = await media.answer(call, "callee", body)
    ...
    for call in media.timed_out(time.monotonic()):
        ...  # BYE both sides, then:
    await media.end(call, "bye")
    await media.close()

Rules of this file:

- The decisions are :class:`media.sdp_rewrite.Negotiation`'s (pure); this file does
  the I/O around them: relay sessions and legs, their remote addresses, their SRTP
  contexts (:class:`media.srtp.Context`), and the log lines.
- One relay session per relayed media section (``m=`` line) of a call, with two legs:
  the relay's ``"offer"`` leg faces the caller, its ``"answer"`` leg the callee,
  whichever side offers (re-INVITEs come from either side).  The session of the first
  section is named after the call key, the others ``<call key>#<index>``.  Legs are
  made on the first offer that relays their section and live until :meth:`end`; the
  offering side's leg multiplexes RTCP when its offer asked for it (RFC 5761), the
  other side's not until that side offers it (it may not support it).
- A re-offer that turns rtcp-mux on or off adapts the offering side's leg in place
  (:meth:`media.relay.Leg.set_rtcp_mux`): its ports stay, so the other side sees no
  change and needs no new port.  On: the RTCP socket closes (its port stays reserved
  with the pair).  Off: the reserved odd port is bound again; should that fail, the
  leg keeps multiplexing and the answer names the RTP port in ``a=rtcp`` without
  ``a=rtcp-mux`` (RFC 3605), which works with any endpoint and is logged.
- A leg's SRTP context lives as long as its key: a re-offer with the same key keeps
  the context (its roll-over counter and replay window), a new key gets a new one.
- ``[media] fast_path`` (the default): the relay's legs live in the C data plane
  (:mod:`media.fastpath`), which the controller makes, owns and closes; SRTP contexts
  are then the C core's, fresh per key (the plane owns what it is given).  Where the
  plane cannot run, the relay forwards in Python and ``media_fast_path_unavailable``
  says why, once, at start-up.
- ``passthrough`` on either side's policy, or ``[media] enabled = false``: the SDP
  goes through untouched and nothing is allocated, for the whole call.
- A "dtls-srtp" side (WebRTC; :mod:`media.webrtc`) gets a leg with rtcp-mux, ICE-lite and
  DTLS from its first offer on; the ICE/DTLS parameters of its SDP are applied to the
  leg (never SDES contexts: its keys come from the handshake).  The leg's events are
  logged (``media_ice_nominated``, ``media_dtls_connected`` with the handshake time,
  ``media_dtls_failed``); a failure is also an audit event (``media_dtls_failed``,
  action ``refuse``) when :attr:`MediaController.audit` is set.  A failed leg forwards
  nothing, so the media timeout ends the call.
- Errors are the proxy's answers: ``SipError`` 400 (SDP that does not parse), 488
  (no usable media stream), 503 (no relay ports free; a log line says so), 500 (an
  answer the controller has no offer for).  Nothing here logs key material; the
  log field for the call is ``call`` (``edge.log`` redacts fields named ``*key*``).
- Calls are serialised by a lock each: :meth:`end` during an offer's port allocation
  waits for it, so no leg outlives its call.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Any, Final

from edge.audit import AuditLog, call_resource_id
from edge.config import MEDIA_POLICIES, Config, ConfigError
from edge.log import LogFn
from media import relay_plane
from media.dtls import DtlsFailed, HandshakeDone
from media.fastpath import FastPath
from media.ports import PortsExhausted
from media.relay import CryptoTransform, Leg, MediaRelay, MediaSession
from media.sdp_rewrite import (
    SIDES,
    LegPorts,
    Negotiation,
    Remote,
    SdesKey,
    Side,
    Stream,
    WebRtcLocal,
)
from media.webrtc import Nominated, WebRtcEvent
from sip.errors import SipError
from sip.sdp import SessionDescription, parse_sdp

# The relay names its legs after offer/answer; the controller's sides are fixed per call.
RELAY_LEG: Final[dict[Side, str]] = {"caller": "offer", "callee": "answer"}
_SIDE_OF_LEG: Final[dict[str, Side]] = {"offer": "caller", "answer": "callee"}
# The audit event of a DTLS handshake that failed or a fingerprint that did not match.
MEDIA_DTLS_FAILED: Final = "media_dtls_failed"


@dataclass(slots=True)
class _LegCrypto:
    """What was last written into one leg: its remote and its SRTP contexts by key."""

    remote: Remote | None = None
    sip_source: str | None = None
    inbound_key: SdesKey | None = None
    inbound: CryptoTransform | None = None
    outbound_key: SdesKey | None = None
    outbound: CryptoTransform | None = None


@dataclass(slots=True)
class _Call:
    key: str
    negotiation: Negotiation | None  # None: passthrough
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    sessions: dict[int, MediaSession] = field(default_factory=dict)
    applied: dict[tuple[int, Side], _LegCrypto] = field(default_factory=dict)
    sources: dict[Side, str | None] = field(default_factory=dict)
    answered_at: float | None = None


class MediaController:
    """SDP offer/answer through the media relay, per call (see the module docstring).

    ``relay`` is made from ``config.media`` when not given (its address from
    :meth:`edge.config.MediaConfig.resolved_address`, which raises ``ConfigError``).
    ``audit``: where DTLS failures are written (set by whoever wires the audit log).
    """

    audit: AuditLog | None = None

    def __init__(
        self, config: Config, *, relay: MediaRelay | None = None, log: LogFn | None = None
    ) -> None:
        media = config.media
        self.config = config
        self.enabled = media.enabled
        self.timeout = media.timeout
        self._log = log
        self._owns_relay = relay is None
        self.fast_path: FastPath | None = None  # made and owned here, with the relay
        if relay is None and self.enabled:
            address = media.resolved_address(config.listen)
            self.fast_path = relay_plane.make_fast_path(
                media.fast_path,
                punt_rate=media.punt_rate,
                punt_burst=float(media.punt_burst),
                poll_us=media.fastpath_poll_us,
                poll_busy_pct=media.fastpath_poll_busy_pct,
            )
            relay = MediaRelay(
                address, media.port_range, media.quarantine, log=log, fast_path=self.fast_path
            )
        self.relay = relay
        if relay is not None:
            relay.on_webrtc_event = self._webrtc_event
        self._calls: dict[str, _Call] = {}
        self._counters: dict[str, int] = dict.fromkeys(
            (
                "offers",
                "answers",
                "passthrough_calls",
                "bad_sdp",
                "offers_refused",
                "answers_refused",
                "ports_exhausted",
                "ice_nominations",
                "dtls_handshakes",
                "dtls_failures",
            ),
            0,
        )

    # ------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Check that the relay address is one of this host's (else ``ConfigError``
        naming ``media.address``) and log where media goes."""
        if self.relay is None:
            self._emit("info", "media_disabled")
            return
        address = self.relay.host
        family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind((address, 0))
            except OSError as exc:
                problem = f"cannot bind {address}: {exc.strerror or exc}"
                raise ConfigError("media.address", problem) from None
        low, high = self.relay.pool.port_range
        fast = self.relay.fast_path
        if self._owns_relay and self.config.media.fast_path and fast is None:
            self._emit(
                "warning",
                "media_fast_path_unavailable",
                problem=relay_plane.UNAVAILABLE,
                consequence="every media packet goes through Python, at a fraction of the rate",
            )
        self._emit(
            "info",
            "media_ready",
            address=address,
            ports=f"{low}-{high}",
            fast_path=fast is not None,
            loops=fast.loops if fast is not None else 0,
        )

    async def close(self) -> None:
        """End every call's media; close the relay if this controller made it."""
        for key in list(self._calls):
            await self.end(key, "shutdown")
        if self.relay is not None and self._owns_relay:
            await self.relay.close()
            if self.fast_path is not None:
                self.fast_path.close()  # joins the loops, closes the plane's sockets

    # ------------------------------------------------------------ offer / answer

    async def offer(
        self,
        call_key: str,
        leg_from: str,
        body: bytes,
        *,
        from_policy: str,
        to_policy: str,
        source_ip: str,
    ) -> bytes:
        """An SDP offer from side ``leg_from`` to the other: returns the SDP to forward."""
        side = _side(leg_from)
        for policy in (from_policy, to_policy):
            if policy not in MEDIA_POLICIES:
                raise ValueError(f"unknown media policy {policy!r}")
        self._counters["offers"] += 1
        call = self._calls.get(call_key)
        passthrough = "passthrough" in (from_policy, to_policy)
        if self.relay is None or (call is None and passthrough):
            if call is None and self.relay is not None:
                self._calls[call_key] = _Call(call_key, None)
                self._counters["passthrough_calls"] += 1
            return body
        if call is not None and call.negotiation is None:
            return body  # a passthrough call stays one
        sd = self._parse(body, call_key, "offer")
        new = call is None
        if call is None:
            call = _Call(call_key, Negotiation(self.relay.host))
        assert call.negotiation is not None
        async with call.lock:
            try:
                plan = call.negotiation.plan_offer(sd, side, from_policy, to_policy)
            except SipError as exc:
                self._refused("offers_refused", "media_offer_refused", call_key, exc)
                raise
            if new:
                self._calls[call_key] = call
            created: list[int] = []
            try:
                for d in plan.relayed:
                    if d.index not in call.sessions:
                        muxes = {s: d.mux_for(s == side) for s in SIDES}
                        await self._new_session(call, d.index, muxes)
                        created.append(d.index)
            except PortsExhausted as exc:
                self._counters["ports_exhausted"] += 1
                self._emit("error", "media_ports_exhausted", call=call_key, problem=str(exc))
                await self._drop_sessions(call, created, new)
                raise SipError("no media ports free", 503) from None
            except BaseException:
                await self._drop_sessions(call, created, new)
                raise
            for d in plan.relayed:
                if d.index not in created:
                    await self._switch_rtcp_mux(call, d.index, side, d.rtcp_mux)
                for s in SIDES:
                    if d.dtls_for(s == side):
                        leg = self._leg(call, d.index, s)
                        if not leg.rtcp_mux:  # a side that turned WebRTC on a re-offer
                            await leg.set_rtcp_mux(True)
                        leg.enable_webrtc()
            ports = {
                d.index: {s: _ports(self._leg(call, d.index, s)) for s in SIDES}
                for d in plan.relayed
            }
            out = call.negotiation.write_offer(plan, ports)
            call.sources[side] = _ip_or_none(source_ip)
            for d in plan.streams:
                if d.index in call.sessions:
                    self._apply(call, call.negotiation.streams[d.index], side)
            if created:
                self._emit(
                    "info",
                    "media_session_created" if new else "media_stream_added",
                    call=call_key,
                    streams=[
                        {
                            "index": i,
                            "caller_port": self._leg(call, i, "caller").local_rtp_port,
                            "callee_port": self._leg(call, i, "callee").local_rtp_port,
                        }
                        for i in created
                    ],
                    policies=f"{from_policy}->{to_policy}",
                )
            return bytes(out)

    async def answer(self, call_key: str, leg_from: str, body: bytes) -> bytes:
        """The answer from side ``leg_from`` to the last offer: returns the SDP to forward."""
        side = _side(leg_from)
        self._counters["answers"] += 1
        if self.relay is None:
            return body
        call = self._calls.get(call_key)
        if call is None:
            raise SipError("an SDP answer for a call without an offer", 500)
        if call.negotiation is None:
            return body
        sd = self._parse(body, call_key, "answer")
        async with call.lock:
            try:
                out = call.negotiation.answer(sd, side)
            except SipError as exc:
                self._refused("answers_refused", "media_answer_refused", call_key, exc)
                raise
            for index, stream in call.negotiation.streams.items():
                if index in call.sessions:
                    for s in SIDES:
                        self._apply(call, stream, s)
            call.answered_at = self.relay.clock()
            return bytes(out)

    async def end(self, call_key: str, reason: str) -> None:
        """Delete the call's media sessions (idempotent)."""
        call = self._calls.pop(call_key, None)
        if call is None or self.relay is None:
            return
        async with call.lock:
            totals = {"packets_in": 0, "packets_out": 0, "dropped": 0}
            for session in call.sessions.values():
                for leg in session.legs.values():
                    c = leg.counters
                    totals["packets_in"] += c.packets_in
                    totals["packets_out"] += c.packets_out
                    totals["dropped"] += sum(c.drops.values())
                await self.relay.delete_session(session.call_id)
            relayed = bool(call.sessions)
            call.sessions.clear()
        if relayed:
            self._emit("info", "media_ended", call=call_key, reason=reason, **totals)

    # ------------------------------------------------------------ queries

    def timed_out(self, now: float) -> list[str]:
        """Call keys whose media timed out: answered, and no packet either way on any
        live stream for ``[media] timeout`` seconds; never while on hold.  ``now`` is
        on the relay's clock (``time.monotonic`` by default)."""
        if self.relay is None or self.timeout <= 0:
            return []
        expired: list[str] = []
        for key, call in self._calls.items():
            if call.negotiation is None or call.answered_at is None:
                continue
            if now - call.answered_at < self.timeout:
                continue
            live = [
                session
                for index, session in call.sessions.items()
                if call.negotiation.streams[index].active
            ]
            if live and all(s.media_timeout(now, self.timeout) for s in live):
                expired.append(key)
        return expired

    def stats(self) -> dict[str, int]:
        """Counters for metrics: calls, offers and refusals, relay totals and ports."""
        out = dict(self._counters)
        out["calls"] = len(self._calls)
        out["relayed_calls"] = sum(1 for c in self._calls.values() if c.negotiation is not None)
        if self.relay is not None:
            for name, value in self.relay.stats().items():
                if isinstance(value, dict):
                    out.update({f"drops_{reason}": n for reason, n in value.items()})
                elif isinstance(value, int):
                    out[name] = value
        return out

    def session_info(self, call_key: str) -> dict[str, Any] | None:
        """The call's media for the call inspector: streams, legs, profiles, counters
        (never keys); None for an unknown call."""
        call = self._calls.get(call_key)
        if call is None:
            return None
        if call.negotiation is None:
            return {"call": call_key, "passthrough": True, "streams": []}
        streams = []
        for index, session in sorted(call.sessions.items()):
            stream = call.negotiation.streams[index]
            legs = {}
            for side in SIDES:
                state = stream.sides[side]
                leg = self._leg(call, index, side)
                info = leg.stats()
                info.update(
                    proto=state.proto,
                    srtp=state.srtp,
                    suite=state.outbound.suite if state.outbound is not None else None,
                    local=f"{_host(leg.local_host)}:{leg.local_rtp_port}",
                    remote=None
                    if state.remote is None or not state.remote.rtp_port
                    else f"{_host(state.remote.ip)}:{state.remote.rtp_port}",
                    hold=state.hold,
                )
                legs[side] = info
            streams.append(
                {
                    "index": index,
                    "media": stream.media,
                    "session": session.call_id,
                    "active": stream.active,
                    "on_hold": stream.on_hold,
                    "legs": legs,
                }
            )
        return {
            "call": call_key,
            "passthrough": False,
            "answered": call.answered_at is not None,
            "streams": streams,
        }

    # ------------------------------------------------------------ internals

    def _parse(self, body: bytes, call_key: str, what: str) -> SessionDescription:
        try:
            return parse_sdp(body)
        except SipError as exc:
            self._counters["bad_sdp"] += 1
            self._emit("info", "media_bad_sdp", call=call_key, sdp=what, problem=exc.reason)
            raise SipError(f"bad SDP: {exc.reason}", 400) from None

    def _refused(self, counter: str, event: str, call_key: str, exc: SipError) -> None:
        self._counters[counter] += 1
        self._emit("info", event, call=call_key, status=exc.status_hint, problem=exc.reason)

    async def _new_session(self, call: _Call, index: int, muxes: dict[Side, bool]) -> None:
        assert self.relay is not None
        name = call.key if index == 0 else f"{call.key}#{index}"
        if self.relay.session(name) is not None:  # left over from an earlier use of the key
            await self.relay.delete_session(name)
        session = await self.relay.create_session(name)
        try:
            for side in SIDES:
                await session.add_leg(RELAY_LEG[side], rtcp_mux=muxes[side])
        except BaseException:
            await self.relay.delete_session(name)
            raise
        call.sessions[index] = session

    async def _switch_rtcp_mux(self, call: _Call, index: int, side: Side, mux: bool) -> None:
        """A re-offer from ``side`` asks for (or no longer asks for) rtcp-mux."""
        leg = self._leg(call, index, side)
        if leg.rtcp_mux == mux:
            return
        if await leg.set_rtcp_mux(mux):
            self._emit(
                "info",
                "media_rtcp_mux_switched",
                call=call.key,
                index=index,
                side=side,
                rtcp_mux=mux,
                port=leg.local_rtp_port,
            )
        else:
            self._emit(
                "warning",
                "media_rtcp_mux_kept",
                call=call.key,
                index=index,
                side=side,
                port=leg.local_rtp_port,
                problem="RTCP port busy: RTCP stays on the RTP port",
            )

    async def _drop_sessions(self, call: _Call, indexes: list[int], whole: bool) -> None:
        """Undo a failed offer: the sessions it made, and the call if it was new."""
        assert self.relay is not None
        for index in indexes:
            session = call.sessions.pop(index)
            await self.relay.delete_session(session.call_id)
        if whole and self._calls.get(call.key) is call:
            del self._calls[call.key]

    def _leg(self, call: _Call, index: int, side: Side) -> Leg:
        leg = call.sessions[index].leg(RELAY_LEG[side])
        assert leg is not None
        return leg

    def _apply(self, call: _Call, stream: Stream, side: Side) -> None:
        """Write the negotiated state of one side of one stream into its relay leg."""
        relay = self.relay
        assert relay is not None
        session = call.sessions[stream.index]
        leg = self._leg(call, stream.index, side)
        state = stream.sides[side]
        done = call.applied.setdefault((stream.index, side), _LegCrypto())
        source = call.sources.get(side)
        if state.remote != done.remote or source != done.sip_source:
            remote = state.remote
            try:
                if remote is None or remote.rtp_port == 0:
                    leg.clear_remote()
                else:
                    leg.set_remote(remote.ip, remote.rtp_port, remote.rtcp_port, sip_source=source)
            except ValueError as exc:  # the negotiation checked the family: a bug if here
                leg.clear_remote()
                self._emit("error", "media_remote_refused", call=call.key, problem=str(exc))
            done.remote, done.sip_source = remote, source
        if leg.webrtc is not None:
            self._apply_webrtc(leg, state)
            session.on_hold = stream.on_hold
            return
        if state.inbound is None:
            done.inbound_key, done.inbound = None, None
        elif not state.inbound.same_key(done.inbound_key):
            k = state.inbound
            done.inbound_key = k
            done.inbound = relay.srtp_context(k.key, k.salt, k.suite, "inbound")
        if state.outbound is None:
            done.outbound_key, done.outbound = None, None
        elif not state.outbound.same_key(done.outbound_key):
            k = state.outbound
            done.outbound_key = k
            done.outbound = relay.srtp_context(k.key, k.salt, k.suite, "outbound")
        leg.set_crypto(done.inbound, done.outbound)
        session.on_hold = stream.on_hold

    def _apply_webrtc(self, leg: Leg, state: Any) -> None:
        """The ICE/DTLS parameters of a "dtls-srtp" side's SDP into its leg."""
        assert leg.webrtc is not None and self.relay is not None
        webrtc = leg.webrtc
        now = self.relay.clock()
        out = []
        if state.setup is not None and state.setup != webrtc.setup:
            out += webrtc.configure(state.setup, now)
        remote = state.dtls_remote
        if remote is not None:
            address = None
            if state.remote is not None and state.remote.rtp_port:
                address = (state.remote.ip, state.remote.rtp_port)
            out += webrtc.set_remote(
                ice=remote.ice,
                fingerprints=list(remote.fingerprints),
                setup=remote.setup,
                address=address,
                now=now,
            )
        self.relay.webrtc_output(leg, out)

    def _webrtc_event(self, leg: Leg, event: WebRtcEvent) -> None:
        """Log (and audit) what a "dtls-srtp" leg's ICE and DTLS did."""
        call_key, _, index = leg.session.call_id.partition("#")
        fields: dict[str, Any] = {
            "call": call_key,
            "index": int(index or 0),
            "side": _SIDE_OF_LEG.get(leg.name, leg.name),
        }
        if isinstance(event, Nominated):
            self._counters["ice_nominations"] += 1
            self._emit("info", "media_ice_nominated", **fields, source=_hostport(event.address))
        elif isinstance(event, HandshakeDone):
            self._counters["dtls_handshakes"] += 1
            assert leg.webrtc is not None
            seconds = leg.webrtc.dtls.handshake_seconds
            self._emit(
                "info",
                "media_dtls_connected",
                **fields,
                role=event.role,
                cipher=event.cipher,
                profile=event.keys.suite.dtls_profile,
                handshake_ms=None if seconds is None else round(seconds * 1000, 1),
            )
        elif isinstance(event, DtlsFailed):
            self._counters["dtls_failures"] += 1
            assert leg.webrtc is not None
            peer = leg.webrtc.dtls_peer or leg.webrtc.ice.selected
            self._emit(
                "warning", "media_dtls_failed", **fields, reason=event.reason, detail=event.detail
            )
            if self.audit is not None:
                call_id = call_key.rpartition(";")[0] or call_key
                self.audit.event(
                    MEDIA_DTLS_FAILED,
                    action="refuse",
                    source_ip=peer[0] if peer is not None else None,
                    resource_type="call",
                    resource_id=call_resource_id(call_id),
                    details={"reason": event.reason, "side": fields["side"]},
                )

    def _emit(self, level: str, event: str, **fields: Any) -> None:
        if self._log is not None:
            self._log(level, event, **fields)


def _side(leg_from: str) -> Side:
    if leg_from == "caller":
        return "caller"
    if leg_from == "callee":
        return "callee"
    raise ValueError(f"leg_from must be 'caller' or 'callee', not {leg_from!r}")


def _ports(leg: Leg) -> LegPorts:
    webrtc = None
    if leg.webrtc is not None:
        ice = leg.webrtc.ice
        webrtc = WebRtcLocal(ice.local_ufrag, ice.local_pwd, leg.webrtc.fingerprint)
    return LegPorts(leg.local_rtp_port, leg.local_rtcp_port, leg.rtcp_mux, webrtc)


def _hostport(address: tuple[str, int]) -> str:
    return f"{_host(address[0])}:{address[1]}"


def _ip_or_none(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip
