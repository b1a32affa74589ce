"""The proxy's media side: SDP through the relay, and calls the edge ends itself.

A mixin of :class:`edge.proxy.Proxy` (it reads the proxy's tables and calls
its forwarding methods): offers and answers go through the media controller
(:mod:`edge.media`) before they are forwarded, in the order they arrived; a
failed call gives its relay session back; a call whose media stopped is ended
with a BYE to each party (and an audit event when ``audit`` is set).

Offer/answer per call (RFC 3264 §4, RFC 3262 §5, RFC 3311, RFC 6337 §2.1):

- The call remembers which side's offer waits for an answer (``oa_pending`` in
  the dialog's extra), decided when each message arrives.
- SDP in INVITE and UPDATE is an offer; in a PRACK, the answer when the other
  side's offer waits (it came in a reliable provisional response), else an
  offer; in an ACK, the answer when the other side's offer (in the 2xx) waits,
  else it is removed (an ACK makes no offer).
- SDP in a response answers the request's offer.  With no offer in an INVITE
  (a late offer, first or re-INVITE) the responder's first SDP is the offer,
  and a different one replaces it until it is answered.  Once the exchange is
  complete, responses may repeat their SDP (the cached rewrite is sent again)
  but new SDP is removed, never forwarded as it came.  An unreliable 18x only
  previews the answer the 2xx gives.
- The SDP may be the body or the ``application/sdp`` part of a multipart body
  (RFC 5621, :mod:`sip.multipart`): only that part changes.  A multipart body
  without SDP, or one that does not parse, carries no SDP.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final, NamedTuple

from edge.audit import AuditLog, call_resource_id
from edge.dialogs import Dialog, DialogTable
from edge.proxy_state import _ClientCtx, _Forward
from media.sdp_rewrite import Side, other_side
from sip.errors import SipError
from sip.message import Request, Response
from sip.multipart import SdpInBody, find_sdp, set_body
from sip.transaction import NonInviteClientTransaction, TimerConfig, TransactionKey, new_branch


class _MediaPlan(NamedTuple):
    """What :meth:`MediaMixin._offer_then_forward` does with a request's SDP."""

    key: str
    side: str
    from_policy: str
    to_policy: str
    kind: str = "offer"  # or "answer" (a PRACK answering a reliable provisional's offer)
    previous: str = ""  # the call's pending offer before this one (restored if refused)


def _reliable_provisional(resp: Response) -> bool:
    """A 1xx sent reliably (RFC 3262 §3: Require: 100rel and an RSeq)."""
    if resp.status >= 200 or resp.status == 100 or "rseq" not in resp.headers:
        return False
    try:
        return "100rel" in (t.lower() for t in resp.require)
    except SipError:
        return False


# The audit event of a call the edge ended because its media stopped.
MEDIA_TIMEOUT: Final = "media_timeout"


class MediaMixin:
    # Where audit events go; None: none (set by whoever wires the audit log).
    audit: AuditLog | None = None

    # Provided by edge.proxy.Proxy.
    config: Any
    router: Any
    media: Any
    dialogs: DialogTable
    log: Any
    max_forwards: int
    timer_config: TimerConfig
    _client: dict[TransactionKey, _ClientCtx]
    _late_answers: dict[str, tuple[bytes, bytes]]

    # Proxy's methods; declared here for the type checker and for mypyc, which
    # compiles this mixin (sip/_compiled.py) and takes no TYPE_CHECKING block.
    def _final(self, fwd: _Forward, status: int) -> None:
        raise NotImplementedError

    def _try_next(self, fwd: _Forward) -> None:
        raise NotImplementedError

    def _relay(self, fwd: _Forward, resp: Response) -> None:
        raise NotImplementedError

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        raise NotImplementedError

    def _end_call(self, dialog: Dialog, reason: str) -> None:
        raise NotImplementedError

    def _our_via(self, transport: str, branch: str) -> str:
        raise NotImplementedError

    def _run(self, ctx: Any, actions: list[Any]) -> None:
        raise NotImplementedError

    def _now(self) -> float:
        raise NotImplementedError

    def _policy_of(self, decision: Any) -> str | None:
        """The media policy of the side a new call goes to (its set or trunk)."""
        cfg = self.config
        if decision.kind == "trunk":
            for trunk in getattr(cfg, "trunks", ()):
                if trunk.name == decision.name:
                    return str(trunk.media)
            return None
        if decision.name == "echo" and hasattr(cfg, "echo"):
            return str(cfg.echo.media)
        for upstream_set in getattr(getattr(cfg, "upstream", None), "sets", ()):
            if upstream_set.name == decision.name:
                return str(upstream_set.media)
        return None

    def _media_plan(
        self, fwd: _Forward, req: Request, role: str, to_policy: str | None
    ) -> _MediaPlan | None:
        """What the media controller does with a new request's SDP before it is
        forwarded, or None (forward as is).  Decided here, on arrival, so that the
        offer/answer state of the call follows the order of the messages."""
        if self.media is None or req.method not in ("INVITE", "UPDATE", "PRACK"):
            return None
        found = find_sdp(req.body, req.content_type) if req.body else None
        key = f"{req.call_id};{req.from_.tag or ''}"
        if fwd.dialog is not None:  # a new call
            if req.method != "INVITE" or to_policy is None:
                return None
            from_policy = self._caller_policy(fwd, role)
            extra = fwd.dialog.extra
            extra["media_key"] = key
            extra["caller_policy"] = from_policy
            extra["callee_policy"] = to_policy
            extra["oa_pending"] = ""
            if found is None:
                # A late offer (RFC 3264 §5 via RFC 3261 §13.2.1): the offer comes in
                # the first reliable response, its answer in the PRACK or the ACK.
                extra["late_offer"] = "1"
                return None
            extra["oa_pending"] = "caller"
            fwd.answer_from = "callee"
            return _MediaPlan(key, "caller", from_policy, to_policy)
        dialog = self.dialogs.get(req.call_id, req.from_.tag, req.to.tag)
        if dialog is None or "media_key" not in dialog.extra:
            return None
        extra = dialog.extra
        side: Side = "caller" if req.from_.tag == dialog.from_tag else "callee"
        other = other_side(side)
        if found is None:
            if req.method == "INVITE":
                # A re-INVITE without SDP: the offer comes in its 2xx and the answer
                # in the ACK, which the proxy then sends through the controller.
                extra["late_offer"] = "1"
            return None
        previous = extra.get("oa_pending", "")
        if req.method == "PRACK" and previous == other:
            # RFC 3262 §5: the answer to an offer in a reliable provisional response.
            extra["oa_pending"] = ""
            return _MediaPlan(extra["media_key"], side, "", "", "answer", previous)
        # An offer: INVITE or UPDATE (RFC 3311), or a PRACK after a reliable
        # provisional that carried an answer or no SDP (RFC 3262 §5).
        extra["oa_pending"] = side
        fwd.answer_from = other
        return _MediaPlan(
            extra["media_key"],
            side,
            extra[f"{side}_policy"],
            extra[f"{other}_policy"],
            "offer",
            previous,
        )

    def _caller_policy(self, fwd: _Forward, role: str) -> str:
        if role == "carrier":
            trunk = self.router.trunk_for_source(fwd.server.source.remote[0])
            return str(trunk.media) if trunk is not None else "rtp"
        return str(self.config.media.caller)

    async def _offer_then_forward(
        self,
        fwd: _Forward,
        key: str,
        side: str,
        from_policy: str,
        to_policy: str,
        kind: str = "offer",
        previous: str = "",
    ) -> None:
        """Send the request's SDP through the controller (an offer, or for a PRACK
        the answer to a reliable provisional's offer), then forward the request."""
        request = fwd.request
        found = find_sdp(request.body, request.content_type)
        if found is None:  # _media_plan found it; the body did not change since
            self._try_next(fwd)
            return
        try:
            if kind == "answer":
                sdp = await self.media.answer(key, side, found.sdp)
            else:
                sdp = await self.media.offer(
                    key,
                    side,
                    found.sdp,
                    from_policy=from_policy,
                    to_policy=to_policy,
                    source_ip=fwd.server.source.remote[0],
                )
        except SipError as error:
            if kind == "answer":
                # The offerer waits for this PRACK: it goes on, without SDP that
                # would leak the caller's addresses (the callee sees no media).
                self.log("warning", "media_answer_refused", reason=error.reason)
                body = found.put(None)
                self._late_answers[key] = (request.body, body)
                set_body(request, body)
                self._try_next(fwd)
                return
            self._restore_pending(fwd, request, side, previous)
            self._final(fwd, error.status_hint)
            return
        body = found.put(sdp)
        if kind == "answer":
            # An ACK that repeats this answer gets the same rewrite.
            self._late_answers[key] = (request.body, body)
        else:
            fwd.media_key = key
        set_body(request, body)
        self._try_next(fwd)

    def _restore_pending(self, fwd: _Forward, req: Request, side: str, previous: str) -> None:
        """A refused offer was never made: the call's offer/answer state is as before."""
        dialog = fwd.dialog or self.dialogs.get(req.call_id, req.from_.tag, req.to.tag)
        if dialog is not None and dialog.extra.get("oa_pending") == side:
            dialog.extra["oa_pending"] = previous

    def _relay_with_media(self, fwd: _Forward, resp: Response) -> None:
        """Relay a response; SDP in it goes through the controller first (as an
        answer, an offer, or a repeat of either), responses kept in order."""
        # Each branch names its own coroutine: mypyc compiles this module and
        # takes one name for one nested function.
        rewrite: Callable[[bytes], Awaitable[bytes]] | None = None
        event = "media_answer_refused"
        found = None
        if self.media is not None and resp.body:
            found = find_sdp(resp.body, resp.content_type)
        role = self._response_role(fwd, resp) if found is not None else None
        if role is None:
            if fwd.media_task is None:
                self._relay(fwd, resp)
                return
        elif role[0] == "answer":
            key, side = role[1], role[2]

            async def answer(sdp: bytes) -> bytes:
                result: bytes = await self.media.answer(key, side, sdp)
                return result

            rewrite = answer

        elif role[0] == "offer":
            key, side, from_policy, to_policy = role[1:]
            source_ip = fwd.client.dest.host if fwd.client is not None else ""

            async def offer(sdp: bytes) -> bytes:
                result: bytes = await self.media.offer(
                    key,
                    side,
                    sdp,
                    from_policy=from_policy,
                    to_policy=to_policy,
                    source_ip=source_ip,
                )
                return result

            rewrite = offer
            event = "media_offer_refused"
        else:

            async def refuse(sdp: bytes) -> bytes:
                # RFC 3261 §13.2.1, RFC 6337 §3.1: once the offer/answer of this
                # transaction is complete, its responses may repeat the SDP (served
                # from the cache) but carry no new one.
                raise SipError("new SDP after the offer/answer was complete", 488)

            rewrite = refuse
            event = "media_sdp_ignored"
        fwd.media_task = self._spawn(
            self._rewrite_then_relay(fwd.media_task, fwd, resp, rewrite, event)
        )

    def _response_role(self, fwd: _Forward, resp: Response) -> tuple[str, ...] | None:
        """What the SDP of a response is (RFC 3264 §4, RFC 6337 §2.1): ("answer", key,
        side), ("offer", key, side, from policy, to policy), ("repeat",), or None for
        a call the relay does not handle.  Updates the call's offer/answer state."""
        req = fwd.request
        dialog = fwd.dialog or self.dialogs.get(req.call_id, req.from_.tag, req.to.tag)
        if dialog is None or "media_key" not in dialog.extra:
            return None
        extra = dialog.extra
        asker: Side = "caller" if req.from_.tag == dialog.from_tag else "callee"
        responder = other_side(asker)
        pending = extra.get("oa_pending", "")
        reliable = resp.status >= 200 or _reliable_provisional(resp)
        if fwd.media_key is not None:  # the request carried an offer: this is its answer
            if pending != asker:
                return ("repeat",)
            if reliable:  # an unreliable 18x previews the answer the 2xx gives
                extra["oa_pending"] = ""
            return ("answer", fwd.media_key, responder)
        if req.method != "INVITE":
            return ("repeat",)  # no offer in the request: nothing new to answer
        if fwd.media_task is None or pending == responder:
            # RFC 3262 §5: with no offer in the INVITE, the responder's first SDP is
            # the offer; until it is answered a new one replaces it.
            extra["oa_pending"] = responder
            return (
                "offer",
                extra["media_key"],
                responder,
                extra[f"{responder}_policy"],
                extra[f"{asker}_policy"],
            )
        return ("repeat",)

    async def _rewrite_then_relay(
        self,
        previous: asyncio.Task[None] | None,
        fwd: _Forward,
        resp: Response,
        rewrite: Callable[[bytes], Awaitable[bytes]] | None,
        event: str,
    ) -> None:
        if previous is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await previous
        if rewrite is not None:
            body = resp.body
            answers = fwd.answers
            # A retransmitted response repeats its SDP.
            rewritten = answers.get(body) if answers is not None else None
            if rewritten is None:
                found = find_sdp(body, resp.content_type)
                assert found is not None  # _relay_with_media found it in this body
                try:
                    rewritten = found.put(await rewrite(found.sdp))
                except SipError as error:
                    # SDP we cannot relay must not leak the far end's addresses:
                    # it goes, the caller sees no media.
                    self.log("warning", event, reason=error.reason)
                    rewritten = found.put(None)
                if fwd.answers is None:
                    fwd.answers = {}
                fwd.answers[body] = rewritten
            set_body(resp, rewritten)
        self._relay(fwd, resp)

    def ack_answer_then_forward(
        self, req: Request, dialog: Dialog, forward: Any
    ) -> Coroutine[Any, Any, None]:
        """An ACK with SDP in a dialog that may expect it (an offer in a 2xx): the
        answer goes through the controller, then the ACK is sent.  Decided now (the
        returned coroutine only does the I/O), so the call's offer/answer state
        follows the order of the messages."""
        extra = dialog.extra
        key = extra["media_key"]
        body = req.body
        side: Side = "caller" if req.from_.tag == dialog.from_tag else "callee"
        found = find_sdp(body, req.content_type)
        done = self._late_answers.get(key)
        answer = found is not None and extra.get("oa_pending") == other_side(side)
        if answer:
            extra["oa_pending"] = ""
        return self._ack_then_forward(req, key, side, found if answer else None, done, forward)

    async def _ack_then_forward(
        self,
        req: Request,
        key: str,
        side: Side,
        found: SdpInBody | None,
        done: tuple[bytes, bytes] | None,
        forward: Any,
    ) -> None:
        body = req.body
        if found is not None:
            try:
                rewritten = found.put(await self.media.answer(key, side, found.sdp))
            except SipError as error:
                self.log("warning", "media_answer_refused", reason=error.reason)
                rewritten = found.put(None)
            self._late_answers[key] = (body, rewritten)
        elif done is not None and done[0] == body:
            rewritten = done[1]  # an ACK for a retransmitted 2xx
        else:
            # No offer waits for an answer: an ACK cannot make one (RFC 3261
            # §13.2.1), and unrelayed SDP must not reach the far end.
            self.log("warning", "media_sdp_ignored", reason="SDP in an ACK with no offer pending")
            sdp = find_sdp(body, req.content_type)
            rewritten = sdp.put(None) if sdp is not None else body
        set_body(req, rewritten)
        forward(req)

    def _media_failed(self, fwd: _Forward, reason: str) -> None:
        """A new call that failed gives its relay session back."""
        if fwd.media_key is not None and fwd.dialog is not None and self.media is not None:
            self._spawn(self.media.end(fwd.media_key, reason))

    def _media_timeouts(self, now: float) -> None:
        """Calls whose media stopped (no packet either way, hold excluded) are
        ended by the edge: a BYE to each party, then the call is forgotten."""
        timed_out = set(self.media.timed_out(now))
        if not timed_out:
            return
        for dialog in self.dialogs:
            if dialog.extra.get("media_key") in timed_out:
                self.log("warning", "media_timeout", call_id=dialog.call_id)
                if self.audit is not None:
                    self.audit.event(
                        MEDIA_TIMEOUT,
                        action="terminate",
                        customer_id=dialog.extra.get("customer_id"),
                        resource_type="call",
                        resource_id=call_resource_id(dialog.call_id),
                        details={
                            "reason": "no media either way",
                            "timeout": getattr(self.media, "timeout", None),
                            "caller": dialog.caller,
                            "callee": dialog.callee,
                        },
                    )
                self._bye_both(dialog)
                self._end_call(dialog, "media-timeout")

    @staticmethod
    def _remember_parties(dialog: Dialog, invite: Request, ok: Response) -> None:
        """What the edge needs to end the call itself: both targets and identities."""
        if "caller_contact" in dialog.extra:
            return
        caller = invite.contact[0].uri if invite.contact else None
        callee = ok.contact[0].uri if "contact" in ok.headers and ok.contact else None
        # Item by item: compiled, update() with keywords is a generic call with a dict.
        extra = dialog.extra
        extra["caller_contact"] = str(caller) if caller is not None else ""
        extra["callee_contact"] = str(callee) if callee is not None else ""
        extra["caller_from"] = invite.headers.get("From") or ""
        extra["callee_to"] = ok.headers.get("To") or ""
        extra["invite_cseq"] = str(invite.cseq.number)

    def _bye_both(self, dialog: Dialog) -> None:
        """§15: a BYE to each party, as if the other had hung up.

        Sent straight to each party's hop with its Contact as Request-URI; the
        CSeq is far above the INVITE's so that it is higher than anything the
        party has seen from the other side (§12.2.2).
        """
        extra = dialog.extra
        if not extra.get("caller_contact") or not extra.get("callee_contact"):
            return
        cseq = int(extra["invite_cseq"]) + 10000
        for target, hop, from_value, to_value in (
            (extra["callee_contact"], dialog.callee_hop, extra["caller_from"], extra["callee_to"]),
            (extra["caller_contact"], dialog.caller_hop, extra["callee_to"], extra["caller_from"]),
        ):
            if hop is None:
                continue
            try:
                headers: list[tuple[str, Any]] = [
                    ("Via", self._our_via(hop.transport, new_branch())),
                    ("Max-Forwards", str(self.max_forwards)),
                    ("From", from_value),
                    ("To", to_value),
                    ("Call-ID", dialog.call_id),
                    ("CSeq", f"{cseq} BYE"),
                    ("Reason", 'SIP;cause=408;text="media timeout"'),
                ]
                bye = Request("BYE", target, headers)
            except SipError as error:
                self.log("warning", "bye_not_sent", call_id=dialog.call_id, reason=error.reason)
                continue
            txn = NonInviteClientTransaction(
                bye, reliable=hop.transport != "udp", config=self.timer_config
            )
            cctx = _ClientCtx(txn, hop, None)
            self._client[txn.key] = cctx
            self._run(cctx, txn.start(self._now()))
