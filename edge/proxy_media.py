"""The proxy's media side: SDP through the relay, and calls the edge ends itself.

A mixin of :class:`edge.proxy.Proxy` (it reads the proxy's tables and calls
its forwarding methods): offers and answers of INVITE/UPDATE go through the
media controller (:mod:`edge.media`) before they are forwarded, in the order
they arrived; a failed call gives its relay session back; a call whose media
stopped is ended with a BYE to each party.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from edge.dialogs import Dialog, DialogTable
from edge.proxy_state import _ClientCtx, _Forward
from sip.errors import SipError
from sip.message import Request, Response
from sip.transaction import NonInviteClientTransaction, TimerConfig, TransactionKey, new_branch

if TYPE_CHECKING:
    pass


class MediaMixin:
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

    if TYPE_CHECKING:

        def _final(self, fwd: _Forward, status: int) -> None: ...
        def _try_next(self, fwd: _Forward) -> None: ...
        def _relay(self, fwd: _Forward, resp: Response) -> None: ...
        def _spawn(self, coro: Any) -> asyncio.Task[None]: ...
        def _end_call(self, dialog: Dialog, reason: str) -> None: ...
        def _our_via(self, transport: str, branch: str) -> str: ...
        def _run(self, ctx: Any, actions: list[Any]) -> None: ...
        def _get_loop(self) -> asyncio.AbstractEventLoop: ...

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
    ) -> tuple[str, str, str, str] | None:
        """(call key, side the offer comes from, its policy, the other side's) or None."""
        if self.media is None or req.method not in ("INVITE", "UPDATE"):
            return None
        if not req.body:
            if fwd.dialog is not None and to_policy is not None:
                # A late offer (RFC 3264 §5 via RFC 3261 §13.2.1): the offer
                # will come in the 2xx and the answer in the ACK.
                key = f"{req.call_id};{req.from_.tag or ''}"
                fwd.dialog.extra.update(
                    media_key=key,
                    caller_policy=self._caller_policy(fwd, role),
                    callee_policy=to_policy,
                    late_offer="1",
                )
            return None
        ctype = req.content_type
        if ctype is None or ctype.mime != "application/sdp":
            return None  # multipart bodies pass untouched (not relayed yet)
        if fwd.dialog is not None:  # a new call
            if to_policy is None:
                return None
            from_policy = self._caller_policy(fwd, role)
            key = f"{req.call_id};{req.from_.tag or ''}"
            fwd.dialog.extra.update(
                media_key=key, caller_policy=from_policy, callee_policy=to_policy
            )
            fwd.answer_from = "callee"
            return key, "caller", from_policy, to_policy
        dialog = self.dialogs.get(req.call_id, req.from_.tag, req.to.tag)
        if dialog is None or "media_key" not in dialog.extra:
            return None
        side = "caller" if req.from_.tag == dialog.from_tag else "callee"
        other = "callee" if side == "caller" else "caller"
        fwd.answer_from = other
        return (
            dialog.extra["media_key"],
            side,
            dialog.extra[f"{side}_policy"],
            dialog.extra[f"{other}_policy"],
        )

    def _caller_policy(self, fwd: _Forward, role: str) -> str:
        if role == "carrier":
            trunk = self.router.trunk_for_source(fwd.server.source.remote[0])
            return str(trunk.media) if trunk is not None else "rtp"
        return str(self.config.media.caller)

    async def _offer_then_forward(
        self, fwd: _Forward, key: str, side: str, from_policy: str, to_policy: str
    ) -> None:
        try:
            body = await self.media.offer(
                key,
                side,
                fwd.request.body,
                from_policy=from_policy,
                to_policy=to_policy,
                source_ip=fwd.server.source.remote[0],
            )
        except SipError as error:
            self._final(fwd, error.status_hint)
            return
        fwd.media_key = key
        fwd.request.body = body
        self._try_next(fwd)

    def _relay_with_media(self, fwd: _Forward, resp: Response) -> None:
        """Relay a response; SDP in it is rewritten first, responses kept in order."""
        dialog = fwd.dialog
        rewrite: Callable[[bytes], Awaitable[bytes]] | None = None
        event = "media_answer_refused"
        if (
            fwd.media_key is None
            and resp.body
            and dialog is not None
            and dialog.extra.get("late_offer") == "1"
            and 200 <= resp.status < 300
        ):
            # The callee's 2xx carries the offer of a late-offer call.
            extra = dialog.extra
            source_ip = fwd.client.dest.host if fwd.client is not None else ""

            async def rewrite(body: bytes) -> bytes:
                result: bytes = await self.media.offer(
                    extra["media_key"],
                    "callee",
                    body,
                    from_policy=extra["callee_policy"],
                    to_policy=extra["caller_policy"],
                    source_ip=source_ip,
                )
                return result

            event = "media_offer_refused"
        elif fwd.media_key is not None and resp.body:
            key, side = fwd.media_key, fwd.answer_from

            async def rewrite(body: bytes) -> bytes:
                result: bytes = await self.media.answer(key, side, body)
                return result

        elif fwd.media_task is None:
            self._relay(fwd, resp)
            return
        fwd.media_task = self._spawn(
            self._rewrite_then_relay(fwd.media_task, fwd, resp, rewrite, event)
        )

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
            rewritten = fwd.answers.get(body)  # a retransmitted response repeats its SDP
            if rewritten is None:
                try:
                    rewritten = await rewrite(body)
                except SipError as error:
                    # SDP we cannot relay must not leak the far end's addresses:
                    # drop the body, the caller sees no media.
                    self.log("warning", event, reason=error.reason)
                    rewritten = b""
                fwd.answers[body] = rewritten
            resp.body = rewritten
        self._relay(fwd, resp)

    async def ack_answer_then_forward(self, req: Request, dialog: Dialog, forward: Any) -> None:
        """The caller's ACK carries the answer of a late-offer call: rewrite, then send."""
        key = dialog.extra["media_key"]
        body = req.body
        done = self._late_answers.get(key)
        if done is not None and done[0] == body:
            rewritten = done[1]  # an ACK for a retransmitted 2xx
        else:
            try:
                rewritten = await self.media.answer(key, "caller", body)
            except SipError as error:
                self.log("warning", "media_answer_refused", reason=error.reason)
                rewritten = b""
            self._late_answers[key] = (body, rewritten)
        req.body = rewritten
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
                self._bye_both(dialog)
                self._end_call(dialog, "media-timeout")

    @staticmethod
    def _remember_parties(dialog: Dialog, invite: Request, ok: Response) -> None:
        """What the edge needs to end the call itself: both targets and identities."""
        if "caller_contact" in dialog.extra:
            return
        caller = invite.contact[0].uri if invite.contact else None
        callee = ok.contact[0].uri if "contact" in ok.headers and ok.contact else None
        dialog.extra.update(
            caller_contact=str(caller) if caller is not None else "",
            callee_contact=str(callee) if callee is not None else "",
            caller_from=invite.headers.get("From") or "",
            callee_to=ok.headers.get("To") or "",
            invite_cseq=str(invite.cseq.number),
        )

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
            self._run(cctx, txn.start(self._get_loop().time()))
