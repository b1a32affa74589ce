"""The stateful proxy core (RFC 3261 §16, RFC 3581, RFC 5658).

One :class:`Proxy` owns the transaction tables and decides, for every message
the transport layer hands it, what goes where.  Protocol state lives in the
``sip/`` machines; this module is the transaction user of RFC 3261 §16:

- a request that matches a server transaction is a retransmission (or the ACK
  of a non-2xx) and goes to that transaction, which absorbs it;
- a new request gets a server transaction (which sends 100 Trying for an
  INVITE at once), then Route processing (§16.4), loop and hop checks, a
  Record-Route (two entries when the transport changes or the caller is on a
  connection, RFC 5658), our Via, and a client transaction towards the next
  hop; failures (timeout, transport error, 503) fail over to the next target
  of the upstream set, and 408/503 are synthesised when none is left; a new
  call past ``[limits] max_calls`` or ``max_cps`` gets 503 (edge/overload.py);
- responses go back through the client transaction to the server transaction;
  a response that matches none is forwarded statelessly (§16.7 step 10 / §16.11);
- an ACK for a 2xx and anything else without a transaction of its own is
  forwarded statelessly along the route set; CANCEL is answered hop by hop and
  cancels the pending branch (§16.10).

Transaction timers run on one :class:`~edge.timer_wheel.TimerWheel`: each
context keeps the ticket of each running timer by name and hands the wheel
each ticket it drops, and every expiry re-enters through :meth:`Proxy._run`,
the one place actions are carried out.  Timer C (§16.6 item 11) runs on the same
wheel; the proxy finds the forward it guards by its ticket.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections.abc import Callable
from typing import Any, Final, cast

from edge.admission import Action, Admission, trusted_identity
from edge.dialogs import Dialog, DialogState, DialogTable
from edge.flows import FlowTokens
from edge.overload import CallGate
from edge.proxy_media import MediaMixin
from edge.proxy_state import _ClientCtx, _Forward, _ServerCtx
from edge.registrar import Registrar
from edge.routing import is_e164
from edge.state import MemoryStateStore
from edge.timer_wheel import TimerWheel
from edge.tls import certificate_matches
from edge.transport import Destination, Source
from sip._abnf import remember
from sip.errors import SipError
from sip.headers import NameAddr, Via, has_param
from sip.message import (
    STANDARD_METHODS,
    Limits,
    Request,
    Response,
    make_response,
    own_via,
    parse_message,
    salvage_response,
)
from sip.multipart import find_sdp, set_body
from sip.random_tokens import token_hex
from sip.transaction import (
    MAGIC_COOKIE,
    CancelTimer,
    DeliverToTU,
    NonInviteClientTransaction,
    Send,
    StartTimer,
    Terminated,
    TimeoutToTU,
    TimerConfig,
    TimerName,
    TransactionKey,
    TransportErrorToTU,
    cancel_target_key,
    client_key,
    client_transaction,
    new_branch,
    server_key,
    server_transaction,
)
from sip.uri import URI, format_host, is_ip_literal
from sip.validate import check_proxy_request

Log = Callable[..., None]

ALLOW: Final = (
    "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, PRACK, REFER, NOTIFY, SUBSCRIBE, MESSAGE"
)
# Requests that create a dialog, and so are Record-Routed (§16.6 item 4, RFC 6665).
DIALOG_CREATING: Final = frozenset({"INVITE", "SUBSCRIBE", "REFER"})
DEFAULT_PORTS: Final = {"udp": 5060, "tcp": 5060, "tls": 5061}
#: The wheel's name for §16.6 item 11's Timer C (its owner is the proxy, which
#: finds the forward by ticket; the transaction timers' owners are contexts, and
#: none of theirs is called "C").
TIMER_C: Final = "C"
# Methods counted by name (RFC 3261 and extensions); anything else is "other".
KNOWN_METHODS: Final = STANDARD_METHODS
# What a browser's side speaks (issue 6): DTLS-SRTP with ICE-lite.
WEBRTC_POLICY: Final = "dtls-srtp"
#: Seconds between two ``overload`` log lines (each sums the calls refused since).
OVERLOAD_LOG_EVERY: Final = 10.0
#: Bound on Proxy._is_us's answers by URI text.
_US_CACHE_MAX: Final = 4096


def _noop_log(level: str, event: str, **fields: Any) -> None:
    pass


def uri_destination(uri: URI, conn_id: int | None = None) -> Destination | None:
    """Where a SIP URI points, without DNS (§16.6 item 6 with an IP host, or maddr)."""
    if not uri.is_sip:
        return None
    host = uri.maddr or uri.host
    transport = uri.transport or ("tls" if uri.scheme == "sips" else "udp")
    if transport in ("ws", "wss"):
        # RFC 7118: a WebSocket client is reached only on its own connection (its
        # host is made up, "*.invalid"); the flow token named the connection.
        if conn_id is None:
            return None
        return Destination("wss", host if is_ip_literal(host) else "", uri.port or 0, conn_id)
    if not is_ip_literal(host):
        return None
    if transport not in DEFAULT_PORTS:
        return None
    return Destination(transport, host, uri.port or DEFAULT_PORTS[transport], conn_id)


def _describe(dest: Destination | Source) -> str:
    if isinstance(dest, Source):
        return f"{dest.transport}:{format_host(dest.remote[0])}:{dest.remote[1]}"
    return f"{dest.transport}:{format_host(dest.host)}:{dest.port}"


class Proxy(MediaMixin):
    """The transaction user of a stateful, record-routing proxy."""

    def __init__(
        self,
        config: Any,
        transport: Any,
        router: Any,
        *,
        log: Log | None = None,
        dialogs: DialogTable | None = None,
        admission: Admission | None = None,
    ) -> None:
        self.config = config
        self.transport = transport
        self.router = router
        self.log: Log = log or _noop_log
        proxy_cfg = config.proxy
        self.limits = Limits(max_message_size=config.limits.max_message_size)
        limits = config.limits
        self.call_gate = CallGate(limits.max_calls, limits.max_cps)
        retry_after = int(limits.overload_retry_after)
        self._overload_headers: tuple[tuple[str, str], ...] = (
            (("Retry-After", str(retry_after)),) if retry_after else ()
        )
        self._overload_logged: float | None = None
        self._overload_unlogged: dict[str, int] = {}
        self.timer_config = TimerConfig(
            t1=proxy_cfg.timer_t1, t2=proxy_cfg.timer_t2, t4=proxy_cfg.timer_t4
        )
        self.timer_c = float(proxy_cfg.timer_c)
        self.max_forwards = int(proxy_cfg.max_forwards)
        self.record_route = bool(proxy_cfg.record_route)
        self.server_header = str(proxy_cfg.server_header)
        self.trunk_header = str(proxy_cfg.trunk_header)
        self.advertise = str(getattr(config.listen, "advertise", "") or "")
        self.dialogs = dialogs or DialogTable()
        # Who gets in (edge/admission.py): by default an in-memory state store,
        # no credential database (nobody but trunks and upstreams), no audit log.
        self.admission = admission or Admission(config, MemoryStateStore())
        self.audit = self.admission.audit  # media timeouts (edge/proxy_media.py)
        self.flows = FlowTokens()
        # Bindings live in the state store, next to bans and buckets.
        self.registrar = Registrar(table=getattr(self.admission.store, "registrations", None))
        self.metrics: Any = None  # edge.metrics.Metrics, set by the app
        self.draining = False
        self.counters: dict[str, int] = {}
        self._request_names: dict[str, dict[str, str]] = {}
        self._response_names: dict[str, dict[int, str]] = {}
        self._server: dict[TransactionKey, _ServerCtx] = {}
        self._client: dict[TransactionKey, _ClientCtx] = {}
        self._forwards: set[_Forward] = set()
        self._local_hosts: set[str] = set()
        self._local_ports: set[int] = set()
        for kind in ("udp", "tcp", "tls", "wss"):
            for hp in getattr(config.listen, kind, ()):
                self._local_hosts.add(hp.host.lower())
                self._local_ports.add(hp.port)
        if self.advertise:
            self._local_hosts.add(self.advertise.lower())
        self._us: dict[str, bool] = {}  # _is_us by URI text
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clock: Callable[[], float] | None = None  # the loop's time, bound
        self._wheel: TimerWheel | None = None
        # The forwards whose Timer C runs, by wheel ticket.  The wheel's entry names
        # the proxy, not the forward: the wheel keeps a stopped timer's entry until
        # its tick passes (180 s for Timer C), and a forward there would keep its
        # call's transactions and messages alive that long.
        self._timer_c_forwards: dict[int, _Forward] = {}
        self._probe_task: asyncio.Task[None] | None = None
        self.media: Any = None  # edge.media.MediaController when [media] is enabled
        self._tasks: set[asyncio.Task[None]] = set()
        self._late_answers: dict[str, tuple[bytes, bytes]] = {}
        self._loop_secret = secrets.token_hex(4)
        # Keyed BLAKE2s (hashlib's own): a copy, an update and a digest of 12 bytes
        # cost half what SHA-256 through OpenSSL did for the same 24 hex digits.
        self._ack_hasher = hashlib.blake2s(key=self._loop_secret.encode(), digest_size=12)
        self._roles: dict[str, tuple[str | None, Any, bool]] = {}

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        # A browser's registrations end with its WebSocket.
        self.transport.on_connection_closed = self._connection_closed
        media_cfg = getattr(self.config, "media", None)
        if media_cfg is not None and media_cfg.enabled and self.media is None:
            from edge.media import MediaController

            self.media = MediaController(self.config, log=self.log)
            self.media.audit = self.audit  # DTLS failures are audit events
            await self.media.start()  # ConfigError naming media.address if unusable
        self._probe_task = asyncio.create_task(self._probe_loop())

    async def drain(self, grace: float) -> None:
        """Refuse new calls (503) and wait up to ``grace`` s for live ones to end."""
        self.draining = True
        self.log("info", "draining", dialogs=len(self.dialogs), grace=grace)
        loop = self._get_loop()
        deadline = loop.time() + grace
        while loop.time() < deadline:
            # Transactions that merely wait out retransmissions (Timer J, K)
            # hold nothing up: only calls and unanswered requests do.
            if not len(self.dialogs) and not any(not f.final_sent for f in self._forwards):
                break
            await asyncio.sleep(0.1)

    async def close(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self.media is not None:
            await self.media.close()
        if self._wheel is not None:
            self._wheel.close()
        for fwd in self._timer_c_forwards.values():
            fwd.timer_c = None
        self._timer_c_forwards.clear()

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def _now(self) -> float:
        """The loop's clock (what the transactions and timers run on)."""
        # The bound method, kept: compiled, loop.time() is a generic method call
        # whose lookup costs more than the clock read (about 20 per call).
        clock = self._clock
        if clock is None:
            clock = self._clock = self._get_loop().time
        return clock()

    def _timers(self) -> TimerWheel:
        wheel = self._wheel
        if wheel is None:
            wheel = self._wheel = TimerWheel(self._get_loop(), self._on_timer)
        return wheel

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    # The per-message counters' names, each put together once (an f-string per
    # message cost a new string and its hash).  Their parts come from closed sets
    # (known methods or "other", status classes, transports), so the tables stay small.
    def _count_request(self, method: str, transport: str) -> None:
        names = self._request_names.get(transport)
        if names is None:
            names = self._request_names[transport] = {}
        name = names.get(method)
        if name is None:
            name = names[method] = f"requests_{method}_{transport}"
        self._count(name)

    def _count_response(self, status: int, transport: str) -> None:
        names = self._response_names.get(transport)
        if names is None:
            names = self._response_names[transport] = {}
        status_class = status // 100
        name = names.get(status_class)
        if name is None:
            name = names[status_class] = f"responses_{status_class}xx_{transport}"
        self._count(name)

    # ------------------------------------------------------------ entry point
    def on_message(self, data: bytes, source: Source) -> None:
        """The transport layer's callback: one whole message from ``source``."""
        try:
            if self.admission.banned(source.remote[0]):
                return  # not even parsed: a flood costs a lookup
            try:
                msg = parse_message(data, self.limits, stream=source.transport != "udp")
            except SipError as error:
                self._count("parse_errors")
                # Only peers we know get an answer: to a stranger it would
                # confirm that a SIP server lives here.  Garbage counts against
                # the stranger's request bucket like any request.
                trusted = self._role(source) is not None
                if self.admission.metered(source.remote[0], trusted) and trusted:
                    answer = salvage_response(data, error)
                    if answer is not None:
                        self.transport.send(answer, self._source_destination(source, None))
                return
            if isinstance(msg, Response):
                self._on_response(msg, source)
            else:
                self._on_request(msg, source)
        except Exception as exc:  # never let one message stop the loop
            self._count("internal_errors")
            self.log("error", "proxy_error", error=repr(exc), source=_describe(source))

    # ------------------------------------------------------------ requests
    def _on_request(self, req: Request, source: Source) -> None:
        now = self._now()
        # Known methods only: a stranger's invented ones must not grow the table.
        method = req.method.lower() if req.method in KNOWN_METHODS else "other"
        self._count_request(method, source.transport)
        self._stamp_via(req, source)
        if req.method in ("ACK", "CANCEL") and not self.admission.metered(
            source.remote[0], self._role(source) is not None
        ):
            return  # a stranger's flood of ACKs or CANCELs: admit() never sees them
        if req.method == "ACK":
            ctx = self._server.get(server_key(req))
            if ctx is not None:
                self._run(ctx, ctx.txn.receive_request(req, now))
            else:
                self._forward_stateless(req, source)
            return
        if req.method == "CANCEL":
            self._on_cancel(req, source, now)
            return
        key = server_key(req)
        ctx = self._server.get(key)
        if ctx is not None:
            self._run(ctx, ctx.txn.receive_request(req, now))
            return
        role = self._role(source)
        ip = source.remote[0]
        decision = self.admission.admit(
            req,
            ip,
            trusted=trusted_identity(role, self._trusted_name(ip)),
            known_dialog=role is None and self._known_dialog(req, ip),
        )
        if decision.action is Action.DROP:
            self._count("refused_dropped")
            return
        if decision.action is Action.REPLY:
            self._count(f"refused_{decision.status}")
            self._reply_stateless(req, source, decision.status, tuple(decision.headers))
            return
        try:
            check_proxy_request(req)
            if role == "carrier" and req.method == "INVITE" and req.to.tag is None:
                self._check_carrier_numbers(req, ip)
        except SipError as error:
            self._reply_stateless(req, source, error.status_hint, error.headers)
            return
        ctx = self._new_server(req, source, now)
        if ctx is None:
            return
        self.admission.prepare(req, decision, trusted_source=role is not None)
        ctx.identity = decision.identity
        self._route(ctx, req, role or "user", now)

    def _new_server(self, req: Request, source: Source, now: float) -> _ServerCtx | None:
        txn = server_transaction(req, reliable=source.transport != "udp", config=self.timer_config)
        ctx = _ServerCtx(txn, source, self._source_destination(source, req.top_via))
        self._server[txn.key] = ctx
        actions = txn.receive_request(req, now)
        self._run(ctx, [a for a in actions if not isinstance(a, DeliverToTU)])
        return ctx

    def _route(self, ctx: _ServerCtx, req: Request, role: str, now: float) -> None:
        """§16.4-16.6: decide the next hop(s) and forward."""
        fwd_req = Request(req.method, req.uri, req.headers.copy(), req.body)
        if role != "upstream":
            # Only our upstreams may pick a trunk; nobody else can forge it.
            fwd_req.headers.remove(self.trunk_header)
        flow_conn = self._pop_own_routes(fwd_req)
        in_dialog = fwd_req.to.tag is not None
        to_us = self._is_us(fwd_req.uri) or req.max_forwards == 0
        if req.method == "OPTIONS" and not in_dialog and not fwd_req.route and to_us:
            # §11: OPTIONS addressed to the edge itself is answered here.
            self._reply(ctx, 200, [("Allow", ALLOW), ("Accept", "application/sdp")])
            return
        if self._looped(fwd_req):
            self._reply(ctx, 482)
            return
        if req.method == "REGISTER" and not in_dialog and ctx.source.transport == "wss":
            # Browsers register with the edge itself: their Contact is unreachable
            # except through the WebSocket they hold open (RFC 7118, RFC 5626).
            self._register(ctx, req)
            return
        if req.method == "INVITE" and not in_dialog:
            if self.draining:
                self._reply(ctx, 503, [("Retry-After", "60")])
                return
            if self.call_gate.enabled:
                limit = self.call_gate.refuse(len(self.dialogs), now)
                if limit is not None:
                    self._overloaded(ctx, limit, now)
                    return
        mf = fwd_req.max_forwards
        fwd_req.headers.set("Max-Forwards", str((self.max_forwards if mf is None else mf) - 1))

        hops: list[tuple[Destination, Any]] = []
        decision_policy: str | None = None
        routes = fwd_req.route
        if routes:
            next_uri = routes[0].uri
            if not next_uri.lr:
                # §16.6 item 6: a strict router next: it gets the Request-URI
                # it expects, and the old Request-URI goes to the end.
                fwd_req.headers.add("Route", f"<{fwd_req.uri}>")
                fwd_req.headers.remove_first("Route")
                fwd_req.uri = next_uri
            dest = uri_destination(next_uri, flow_conn)
            if dest is None:
                self._reply(ctx, 503, reason="Next Hop Not Resolvable")
                return
            hops.append((dest, None))
        elif in_dialog:
            # No route set left: the Request-URI is the remote target (§16.5).
            dest = self._dialog_hop(fwd_req) if self._is_us(fwd_req.uri) else None
            if dest is None:
                dest = None if self._is_us(fwd_req.uri) else uri_destination(fwd_req.uri, flow_conn)
            if dest is None:
                self._reply(ctx, 481 if self._is_us(fwd_req.uri) else 503)
                return
            hops.append((dest, None))
        elif self.registrar and (bindings := self.registrar.lookup(fwd_req.uri)):
            binding = bindings[0]  # the most recent registration
            fwd_req.uri = binding.contact
            dest = Destination("wss", binding.remote[0], binding.remote[1], binding.conn_id)
            hops.append((dest, None))
            decision_policy = WEBRTC_POLICY
        else:
            decision = self.router.route_initial(fwd_req, ctx.source.remote[0])
            if decision.kind == "none" or not decision.targets:
                self._reply(ctx, 404 if decision.kind == "none" else 480)
                return
            decision_policy = self._policy_of(decision)
            if decision.kind == "trunk":
                if self._trunk_numbers(decision.name) == "e164" and not is_e164(fwd_req.uri.user):
                    # A carrier wants E.164: better the upstream hears it now.
                    self._reply(ctx, 484)
                    return
                target = decision.targets[0]
                fwd_req.uri = fwd_req.uri.replace(host=target.host, port=target.port)
                fwd_req.headers.remove(self.trunk_header)
            for target in decision.targets:
                dest = Destination(target.transport, target.host, target.port)
                hops.append((dest, target))
        record = self.record_route and req.method in DIALOG_CREATING and not in_dialog
        fwd = _Forward(ctx, fwd_req, hops, record)
        ctx.forward = fwd
        self._forwards.add(fwd)
        if req.method == "INVITE" and not in_dialog:
            fwd.dialog = self.dialogs.early(
                call_id=req.call_id,
                from_tag=req.from_.tag or "",
                caller=_describe(ctx.source),
                callee=_describe(hops[0][0]),
                from_uri=str(req.from_.uri),
                to_uri=str(req.to.uri),
                now=time.time(),
            )
            fwd.dialog.caller_hop = ctx.reply
            fwd.dialog.extra["caller_ip"] = ctx.source.remote[0]
            callee = hops[0][0]
            fwd.dialog.extra["callee_ip"] = callee.host
            identity = ctx.identity
            if identity is not None and identity.customer_id:
                fwd.dialog.extra["customer_id"] = identity.customer_id
            self.admission.call_created(req, ctx.source.remote[0], identity)
            if self.metrics is not None:
                self.metrics.call_started()
        if req.method == "INVITE":
            # On the wheel with the transaction timers: a loop timer per call cost
            # a handle, a libuv timer and a context to start and to cancel.
            fwd.timer_c_due = now + self.timer_c
            self._start_timer_c(fwd, self.timer_c)
        plan = self._media_plan(fwd, req, role, decision_policy)
        if plan is not None:
            self._spawn(self._offer_then_forward(fwd, *plan))
            return
        self._try_next(fwd)

    def _try_next(self, fwd: _Forward) -> None:
        now = self._now()
        if fwd.cancelled:
            self._final(fwd, 487)
            return
        if not fwd.hops:
            if fwd.best is not None:
                self._relay_final(fwd, fwd.best)
            elif fwd.failures and all(f == "timeout" for f in fwd.failures):
                self._final(fwd, 408)
            else:
                self._final(fwd, 503)
            return
        dest, target = fwd.hops.pop(0)
        base = fwd.request
        # Each try adds its own Via and Record-Route to a copy; the last try
        # may use the request itself (nothing will be tried after it).
        req = (
            base if not fwd.hops else Request(base.method, base.uri, base.headers.copy(), base.body)
        )
        try:
            if fwd.record_route:
                self._add_record_route(req, fwd.server.source, dest)
            via = self._new_via(dest.transport, new_branch())
            # Parsed view kept: the client transaction reads this top Via at once.
            req.headers.prepend_parsed("Via", own_via(via), via)
        except SipError:  # no listener for that transport: this hop cannot be used
            self._note_failure(fwd, "transport")
            self._try_next(fwd)
            return
        txn = client_transaction(req, reliable=dest.transport != "udp", config=self.timer_config)
        cctx = _ClientCtx(txn, dest, fwd, target)
        fwd.client = cctx
        if fwd.dialog is not None:
            fwd.dialog.callee = _describe(dest)
            fwd.dialog.callee_hop = dest
        self._client[txn.key] = cctx
        self._run(cctx, txn.start(now))

    def _start_timer_c(self, fwd: _Forward, delay: float) -> None:
        ticket = self._timers().start(self, TIMER_C, delay)
        self._timer_c_forwards[ticket] = fwd
        fwd.timer_c = ticket

    def _on_timer_c(self, ticket: int) -> None:
        """§16.6 item 11: no final response in time: cancel the branch, answer 408."""
        fwd = self._timer_c_forwards.get(ticket)
        if fwd is None:
            return  # stopped since
        del self._timer_c_forwards[ticket]
        fwd.timer_c = None
        left = fwd.timer_c_due - self._now()
        if left > 0.0:
            # A provisional reset it since: wait out the rest.
            self._start_timer_c(fwd, left)
            return
        cctx = fwd.client
        if cctx is not None and cctx.provisional and not cctx.cancelled:
            self._send_cancel(cctx)
        fwd.hops.clear()
        if not fwd.final_sent:
            self._final(fwd, 408)

    # ------------------------------------------------------------ CANCEL
    def _on_cancel(self, req: Request, source: Source, now: float) -> None:
        key = server_key(req)
        existing = self._server.get(key)
        if existing is not None:  # a retransmitted CANCEL
            self._run(existing, existing.txn.receive_request(req, now))
            return
        invite_ctx = self._server.get(cancel_target_key(req))
        if self._role(source) is None and (
            # A stranger may cancel only the INVITE it sent itself.
            invite_ctx is None or invite_ctx.source.remote[0] != source.remote[0]
        ):
            return
        ctx = self._new_server(req, source, now)
        if ctx is None:
            return
        if invite_ctx is None or invite_ctx.forward is None:
            self._reply(ctx, 481)
            return
        self._reply(ctx, 200)  # §16.10: CANCEL is answered hop by hop
        fwd = invite_ctx.forward
        if fwd.final_sent or fwd.cancelled:
            return
        fwd.cancelled = True
        fwd.hops.clear()
        cctx = fwd.client
        if cctx is not None and cctx.provisional:
            self._send_cancel(cctx)
        # Otherwise §9.1: wait for a provisional response before cancelling;
        # _on_client_response sends the CANCEL when it comes.

    def _send_cancel(self, cctx: _ClientCtx) -> None:
        if cctx.cancelled:
            return
        cctx.cancelled = True
        invite = cctx.txn.request
        headers: list[tuple[str, Any]] = [("Via", str(invite.top_via))]
        headers += [("Route", r) for r in invite.headers.get_all("Route")]
        headers += [
            ("Max-Forwards", str(self.max_forwards)),
            ("From", invite.headers.get("From") or ""),
            ("To", invite.headers.get("To") or ""),
            ("Call-ID", invite.call_id),
            ("CSeq", f"{invite.cseq.number} CANCEL"),
        ]
        cancel = Request("CANCEL", invite.uri, headers)
        txn = NonInviteClientTransaction(
            cancel, reliable=cctx.dest.transport != "udp", config=self.timer_config
        )
        cancel_ctx = _ClientCtx(txn, cctx.dest, None)
        self._client[txn.key] = cancel_ctx
        self._run(cancel_ctx, txn.start(self._now()))

    # ------------------------------------------------------------ responses
    def _on_response(self, resp: Response, source: Source) -> None:
        try:
            key = client_key(resp)
        except SipError:
            return
        cctx = self._client.get(key)
        if cctx is not None:
            self._run(cctx, cctx.txn.receive_response(resp, self._now()))
            return
        self._forward_response_stateless(resp)

    def _on_client_response(self, cctx: _ClientCtx, resp: Response) -> None:
        fwd = cctx.forward
        if fwd is None:
            if cctx.on_final is not None and resp.status >= 200:
                cctx.on_final(resp)
            return
        status = resp.status
        if status < 200:
            cctx.provisional = True
            if fwd.cancelled:
                self._send_cancel(cctx)
                return
            if status == 100:
                return  # §16.7 step 5: 100 Trying is hop by hop
            if fwd.timer_c is not None:  # §16.7 step 2: a provisional resets Timer C
                fwd.timer_c_due = self._now() + self.timer_c
            self._relay_with_media(fwd, resp)
            return
        if status < 300:
            # Every 2xx goes upstream, retransmissions too (RFC 6026 §8.4).
            if fwd.dialog is not None:
                self._remember_parties(fwd.dialog, fwd.server.txn.request, resp)
                if self.metrics is not None and fwd.dialog.state is DialogState.EARLY:
                    self.metrics.call_answered()
                self.dialogs.confirm(fwd.dialog, resp.to.tag, time.time())
            if fwd.request.method == "BYE":
                self._end_dialog(fwd.request, "bye")
            fwd.final_sent = True
            self._stop_timer_c(fwd)
            self._relay_with_media(fwd, resp)
            return
        if fwd.final_sent or cctx is not fwd.client:
            return
        if status == 503 or status == 408:
            if cctx.target is not None and status == 503:
                self.router.report_failure(cctx.target, self._now())
            self._note_failure(fwd, str(status))
            if fwd.best is None or status != 408:
                fwd.best = resp
            if fwd.hops and not fwd.cancelled:
                self._try_next(fwd)
                return
        self._relay_final(fwd, resp)

    def _on_client_failure(self, cctx: _ClientCtx, kind: str) -> None:
        """Timer B/F fired or the transport failed: try the next hop (§16.7 step 2)."""
        fwd = cctx.forward
        if fwd is None:
            if cctx.on_final is not None:
                cctx.on_final(None)
            return
        if cctx is not fwd.client or fwd.final_sent:
            return
        if cctx.target is not None:
            self.router.report_failure(cctx.target, self._now())
        self._note_failure(fwd, kind)
        self.log("warning", "next_hop_failed", hop=_describe(cctx.dest), reason=kind)
        self._try_next(fwd)

    def _relay(self, fwd: _Forward, resp: Response) -> None:
        """Send a downstream response upstream through the server transaction."""
        resp.headers.remove_first("Via")
        if self.server_header:
            resp.headers.set("Server", self.server_header)
        self._run(fwd.server, fwd.server.txn.send_response(resp, self._now()))

    def _give_up(self, fwd: _Forward, status: int) -> None:
        """The request ends with a final failure: stop Timer C, free the new call."""
        fwd.final_sent = True
        self._stop_timer_c(fwd)
        self._media_failed(fwd, f"failed-{status}")
        if fwd.dialog is not None:
            self._dialog_over(fwd.dialog, f"failed-{status}")
            fwd.dialog = None

    def _relay_final(self, fwd: _Forward, resp: Response) -> None:
        self._give_up(fwd, resp.status)
        if fwd.request.method == "BYE":
            self._end_dialog(fwd.request, "bye")
        if self.media is not None and resp.body:
            # SDP in a failure (a 488 listing what the callee could do) would give
            # away the callee's addresses: it goes, the rest of the body stays.
            found = find_sdp(resp.body, resp.content_type)
            if found is not None:
                set_body(resp, found.put(None))
        if resp.status == 503:
            # §16.7 step 6: a 503 speaks for the upstream that sent it, not for
            # the edge; forwarded as is, the caller would stop using us too.
            resp.status, resp.reason = 500, "Server Internal Error"
        self._relay(fwd, resp)

    def _final(self, fwd: _Forward, status: int) -> None:
        """A final response of our own for a request we could not get through."""
        if fwd.final_sent:
            return
        self._give_up(fwd, status)
        self._reply(fwd.server, status)

    @staticmethod
    def _note_failure(fwd: _Forward, kind: str) -> None:
        if fwd.failures is None:
            fwd.failures = [kind]
        else:
            fwd.failures.append(kind)

    def _stop_timer_c(self, fwd: _Forward) -> None:
        ticket = fwd.timer_c
        if ticket is not None:
            fwd.timer_c = None
            del self._timer_c_forwards[ticket]
            self._timers().cancel(ticket)

    def _dialog_hop(self, req: Request) -> Destination | None:
        """The other party of a known dialog, for a request that names us as its target.

        RFC 3261 UAs send in-dialog requests along the Record-Route; some load
        generators (sipp's built-in uac) send them back to the Request-URI they
        started with.  The dialog table knows where both parties are.
        """
        dialog = self.dialogs.get(req.call_id, req.from_.tag, req.to.tag)
        if dialog is None:
            return None
        hop: Destination | None = dialog.hop_for(req.from_.tag)
        return hop

    def _end_dialog(self, req: Request, reason: str) -> None:
        dialog = self.dialogs.get(req.call_id, req.from_.tag, req.to.tag)
        if dialog is not None:
            self._end_call(dialog, reason)

    def _end_call(self, dialog: Dialog, reason: str) -> None:
        self._dialog_over(dialog, reason)
        key = dialog.extra.get("media_key")
        if key is not None and self.media is not None:
            self._late_answers.pop(key, None)
            self._spawn(self.media.end(key, reason))

    def _dialog_over(self, dialog: Dialog, reason: str) -> None:
        now = time.time()
        self.dialogs.end(dialog, now, reason)
        duration = now - dialog.answered if dialog.answered is not None else None
        if self.metrics is not None:
            self.metrics.observe_call(duration, reason)
        extra = dialog.extra
        self.admission.call_ended(
            dialog.call_id, reason, duration, extra.get("customer_id"), extra.get("caller_ip")
        )

    def _known_dialog(self, req: Request, ip: str) -> bool:
        """A request of a call the edge admitted, from one of its two parties."""
        if req.to.tag is None:
            return False
        dialog = self.dialogs.get(req.call_id, req.from_.tag, req.to.tag)
        return dialog is not None and ip in (
            dialog.extra.get("caller_ip"),
            dialog.extra.get("callee_ip"),
        )

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = self._get_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log("error", "proxy_task_error", error=repr(task.exception()))

    # ------------------------------------------------------------ stateless
    def _forward_stateless(self, req: Request, source: Source) -> None:
        """An ACK for a 2xx (end to end, §13.2.2.4), forwarded along its route."""
        if self._role(source) is None and not self._known_dialog(req, source.remote[0]):
            return
        if self.media is not None and req.body:
            dialog = self.dialogs.get(req.call_id, req.from_.tag, req.to.tag)
            if dialog is not None and "media_key" in dialog.extra:
                self._spawn(
                    self.ack_answer_then_forward(
                        req, dialog, lambda ack: self._send_stateless(ack, source)
                    )
                )
                return
        self._send_stateless(req, source)

    def _send_stateless(self, req: Request, source: Source) -> None:
        flow_conn = self._pop_own_routes(req)
        mf = req.max_forwards
        if mf is not None and mf <= 0:
            return
        req.headers.set("Max-Forwards", str((self.max_forwards if mf is None else mf) - 1))
        routes = req.route
        next_uri = routes[0].uri if routes else req.uri
        if not routes and self._is_us(req.uri):
            dest = self._dialog_hop(req)
        else:
            dest = uri_destination(next_uri, flow_conn)
        if dest is None:
            return
        # The same ACK retransmitted gets the same branch (§16.11).
        incoming = req.top_via.branch or ""
        hasher = self._ack_hasher.copy()  # keyed once, at start
        hasher.update(f"{incoming}|{next_uri}".encode())
        branch = f"{MAGIC_COOKIE}a{hasher.hexdigest()}"
        req.headers.prepend("Via", self._our_via(dest.transport, branch))
        self.transport.send(req.serialize(), dest)

    def _forward_response_stateless(self, resp: Response) -> None:
        vias = resp.via
        if len(vias) < 2 or not self._is_our_via(vias[0]):
            return
        resp.headers.remove_first("Via")
        nxt = vias[1]
        transport = nxt.transport.lower()
        if transport not in DEFAULT_PORTS:
            return
        host = nxt.received or nxt.host
        port = nxt.rport or nxt.port or DEFAULT_PORTS[transport]
        if not is_ip_literal(host):
            return
        self._count_response(resp.status, transport)
        self.transport.send(resp.serialize(), Destination(transport, host, port))

    # ------------------------------------------------------------ replies
    def _overloaded(self, ctx: _ServerCtx, limit: str, now: float) -> None:
        """A new call past ``[limits] max_calls`` or ``max_cps``: 503, counted, and a
        log line at most every :data:`OVERLOAD_LOG_EVERY` seconds with the sums."""
        self._count(f"overload_{limit}")
        self._reply(ctx, 503, self._overload_headers)
        unlogged = self._overload_unlogged
        unlogged[limit] = unlogged.get(limit, 0) + 1
        last = self._overload_logged
        if last is None or now - last >= OVERLOAD_LOG_EVERY:
            self._overload_logged = now
            self.log(
                "warning",
                "overload",
                refused=dict(unlogged),
                live_calls=len(self.dialogs),
                max_calls=self.call_gate.max_calls,
                max_cps=self.call_gate.max_cps,
            )
            unlogged.clear()

    def _reply(
        self,
        ctx: _ServerCtx,
        status: int,
        headers: list[tuple[str, str]] | tuple[tuple[str, str], ...] = (),
        reason: str | None = None,
    ) -> None:
        extra = list(headers)
        if self.server_header:
            extra.append(("Server", self.server_header))
        to_tag = token_hex(6) if status > 100 else None
        resp = make_response(ctx.txn.request, status, reason, to_tag=to_tag, headers=extra)
        if ctx.forward is not None:
            ctx.forward.final_sent = True
        self._run(ctx, ctx.txn.send_response(resp, self._now()))

    def _reply_stateless(
        self,
        req: Request,
        source: Source,
        status: int,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        extra = list(headers)
        if self.server_header:
            extra.append(("Server", self.server_header))
        resp = make_response(req, status, to_tag=token_hex(6), headers=extra)
        dest = self._source_destination(source, req.top_via)
        self._count_response(status, dest.transport)
        self.transport.send(resp.serialize(), dest)

    # ------------------------------------------------------------ the action loop
    def _run(self, ctx: _ServerCtx | _ClientCtx, actions: list[Any]) -> None:
        for action in actions:
            # By exact type, most frequent first: the action classes are final
            # dataclasses, and `is` spares an isinstance() call per test.  Each is
            # then cast to its class: compiled, its fields are read natively rather
            # than looked up by name on an Any.
            kind = type(action)
            if kind is Send:
                self._send(ctx, cast(Send, action).message)
            elif kind is StartTimer:
                # A new ticket replaces the old one: the old entry fires stale.
                start = cast(StartTimer, action)
                wheel = self._timers()
                old = ctx.timers.get(start.name)
                if old is not None:
                    wheel.cancel(old)
                ctx.timers[start.name] = wheel.start(ctx, start.name, start.delay)
            elif kind is CancelTimer:
                self._drop_timer(ctx, cast(CancelTimer, action).name)
            elif kind is DeliverToTU:
                message = cast(DeliverToTU, action).message
                if isinstance(ctx, _ClientCtx):
                    assert isinstance(message, Response)
                    self._on_client_response(ctx, message)
                elif isinstance(message, Request) and message.method == "ACK":
                    # An ACK for a 2xx matched the INVITE (RFC 6026 Accepted):
                    # it is end to end, so it travels on statelessly.
                    self._forward_stateless(message, ctx.source)
            elif kind is Terminated:
                self._terminated(ctx)
            elif isinstance(ctx, _ClientCtx):
                if kind is TimeoutToTU:
                    self._on_client_failure(ctx, "timeout")
                elif kind is TransportErrorToTU:
                    self._on_client_failure(ctx, "transport")

    def _drop_timer(self, ctx: _ServerCtx | _ClientCtx, name: str) -> None:
        """Forget ``ctx``'s timer ``name``, if running, and tell the wheel."""
        # get and del, not pop(name, None): compiled, those two are native dict
        # operations and pop with a default a generic method call.
        timers = ctx.timers
        ticket = timers.get(name)
        if ticket is not None:
            del timers[name]
            self._timers().cancel(ticket)

    def _terminated(self, ctx: _ServerCtx | _ClientCtx) -> None:
        if ctx.timers:
            wheel = self._timers()
            for ticket in ctx.timers.values():
                wheel.cancel(ticket)
            ctx.timers.clear()
        if isinstance(ctx, _ServerCtx):
            if self._server.get(ctx.txn.key) is ctx:
                del self._server[ctx.txn.key]
            if ctx.forward is not None:
                self._stop_timer_c(ctx.forward)
                self._forwards.discard(ctx.forward)
                # Break the ctx <-> forward cycle so reference counting frees the
                # call's objects now rather than the (rare, tuned) cyclic GC.
                ctx.forward = None
        else:
            if self._client.get(ctx.txn.key) is ctx:
                del self._client[ctx.txn.key]
            fwd = ctx.forward
            if fwd is not None:
                if fwd.client is ctx and fwd.final_sent:
                    fwd.client = None
                ctx.forward = None

    def _on_timer(self, owner: Any, name: str, ticket: int) -> None:
        if name == TIMER_C:
            self._on_timer_c(ticket)
            return
        ctx: _ServerCtx | _ClientCtx = owner
        if ctx.timers.get(name) != ticket:
            return  # cancelled or restarted since
        del ctx.timers[name]
        try:
            self._run(ctx, ctx.txn.timer_fired(cast(TimerName, name), self._now()))
        except Exception as exc:
            self.log("error", "timer_error", error=repr(exc))

    def _send(self, ctx: _ServerCtx | _ClientCtx, message: Request | Response) -> None:
        data = message.serialize()  # not bytes(): compiled, a direct call
        dest = ctx.dest if isinstance(ctx, _ClientCtx) else ctx.reply
        loop = self._get_loop()
        if type(message) is Response:
            self._count_response(message.status, dest.transport)

        def failed() -> None:
            loop.call_soon(self._transport_failed, ctx)

        self.transport.send(data, dest, failed)

    def _transport_failed(self, ctx: _ServerCtx | _ClientCtx) -> None:
        self._run(ctx, ctx.txn.transport_error(self._now()))

    # ------------------------------------------------------------ headers
    def _stamp_via(self, req: Request, source: Source) -> None:
        """RFC 3261 §18.2.1 and RFC 3581 §4: note where the request really came from."""
        via = req.top_via
        ip = source.remote[0]
        received = ip if via.host != ip else None
        rport = str(source.remote[1]) if via.wants_rport and via.rport is None else None
        if received is not None or rport is not None:
            changed = via.stamped(received, rport)
            # own_via: the new text parses back (here and in the responses) from the memo.
            req.headers.replace_first_parsed("Via", own_via(changed), changed)
        if source.conn_id is not None and has_param(via.params, "alias"):
            # RFC 5923: the peer offers this connection for requests to its sent-by.
            self.transport.register_alias(source.conn_id, via.host, via.port or 5060)

    def _source_destination(self, source: Source, via: Via | None) -> Destination:
        """Where responses to a request from ``source`` go (§18.2.2, RFC 3581 §4)."""
        host, port = source.remote
        if source.transport == "udp" and via is not None and not via.wants_rport:
            port = via.port or 5060
        # ``local``: answer from the socket the request came in on (RFC 3581 §4).
        return Destination(source.transport, host, port, source.conn_id, source.local)

    def _local(self, transport: str, family_host: str | None = None) -> tuple[str, int]:
        family = 10 if family_host is not None and ":" in family_host else 2
        addr = self.transport.local_address(transport, family)
        if addr is None:
            addr = self.transport.local_address(transport)
        if addr is None:
            raise SipError(f"no {transport} listener", 503)
        host, port = addr
        if self.advertise:
            host = self.advertise
        return host, port

    def _our_via(self, transport: str, branch: str) -> str:
        return own_via(self._new_via(transport, branch))

    def _new_via(self, transport: str, branch: str) -> Via:
        host, port = self._local(transport)
        return Via.ours(transport.upper(), host, port, branch)

    def _rr_value(self, transport: str, user: str | None = None) -> str:
        host, port = self._local(transport)
        userinfo = f"{user}@" if user else ""
        param = "ws" if transport == "wss" else transport  # RFC 7118 §5.2
        return f"<sip:{userinfo}{format_host(host)}:{port};transport={param};lr>"

    # ------------------------------------------------------------ the registrar
    def _register(self, ctx: _ServerCtx, req: Request) -> None:
        source = ctx.source
        assert source.conn_id is not None  # WSS is a connection
        answer = self.registrar.register(req, source.conn_id, source.remote, ctx.identity)
        self._count(f"register_{answer.status}")
        self.log(
            "info" if answer.status == 200 else "warning",
            "register",
            status=answer.status,
            aor=req.to.uri.user or "",
            source=_describe(source),
        )
        self._reply(ctx, answer.status, answer.headers, reason=answer.reason)

    def _connection_closed(self, conn_id: int) -> None:
        if self.registrar:
            dropped = self.registrar.drop_connection(conn_id)
            if dropped:
                self.log("info", "registrations_dropped", conn_id=conn_id, bindings=dropped)

    def _add_record_route(self, req: Request, source: Source, dest: Destination) -> None:
        """§16.6 item 4; RFC 5658 §4: two entries when the two sides differ."""
        token = None
        if source.conn_id is not None:
            token = self.flows.make(source.conn_id, source.remote)
        inbound = self._rr_value(source.transport, token)
        out_token = None
        if dest.transport == "wss" and dest.conn_id is not None:
            # A browser is reached only on its connection: requests towards it later
            # in the dialog find that connection by this entry's flow token.
            out_token = self.flows.make(dest.conn_id, (dest.host, dest.port))
        if token is None and out_token is None and source.transport == dest.transport:
            req.headers.prepend("Record-Route", inbound)
            return
        req.headers.prepend("Record-Route", inbound)
        req.headers.prepend("Record-Route", self._rr_value(dest.transport, out_token))

    def _pop_own_routes(self, req: Request) -> int | None:
        """§16.4: remove the Route entries that name us; return a flow's connection.

        Also the strict-router fix of §16.4: a Request-URI that is one of our
        Record-Route values came from a strict router, and the real one is the
        last Route value.
        """
        if self._is_us(req.uri) and req.uri.lr and "route" in req.headers:
            routes = req.route
            last = routes[-1]
            req.headers.remove("Route")
            for route in routes[:-1]:
                req.headers.add("Route", str(route))
            req.uri = last.uri
        popped: list[NameAddr] = []
        while True:
            routes = req.route if "route" in req.headers else []
            if not routes or not self._is_us(routes[0].uri):
                break
            popped.append(routes[0])
            req.headers.remove_first("Route")
        if not popped:
            return None
        user = popped[-1].uri.user
        if user is None:
            return None
        return self.flows.check(user, self.transport.connection_remote)

    def _is_us(self, uri: URI) -> bool:
        # By the URI's text: the answer follows from it (the listeners are fixed at
        # start), and a call asks about the same few URIs (our Record-Route values,
        # the Request-URIs) at each hop.  Bounded: the texts come from the network.
        text = uri.text
        known = self._us.get(text) if text else None
        if known is not None:
            return known
        answer = self._names_us(uri)
        if text:
            remember(self._us, text, answer, _US_CACHE_MAX)
        return answer

    def _names_us(self, uri: URI) -> bool:
        if not uri.is_sip or uri.host.lower() not in self._local_hosts:
            return False
        transport = uri.transport or ("tls" if uri.scheme == "sips" else "udp")
        port = uri.port or DEFAULT_PORTS.get(transport, 5060)
        return port in self._local_ports

    def _is_our_via(self, via: Via) -> bool:
        return via.host.lower() in self._local_hosts and (via.port or 5060) in self._local_ports

    def _looped(self, req: Request) -> bool:
        """§16.3 item 4 / §16.6 item 8 loop detection by branch hash.

        Our branches do not encode the request (they are random), so a
        spiral cannot be told from a loop; Max-Forwards (483) ends true
        loops.  Here we only refuse the obvious case: our own Via already
        twice in the path.
        """
        ours = sum(1 for via in req.via if self._is_our_via(via))
        return ours >= 2

    def _role(self, source: Source) -> str | None:
        """'upstream' (one of our targets), 'carrier' (a trunk's allowlist), or None.

        Cached per source IP (bounded): the allowlist walk parses the address.
        Call :meth:`forget_roles` when the allowlist or the upstreams change.
        A trunk that requires a client certificate trusts its sources only over
        TLS with a listed certificate (checked per message, not cached).
        """
        ip = source.remote[0]
        known = self._roles.get(ip)
        if known is None:
            role, trunk = None, None
            if self.router.is_upstream_source(ip):
                role = "upstream"
            else:
                trunk = self.router.trunk_for_source(ip)
                if trunk is not None:
                    role = "carrier"
            if len(self._roles) >= 4096:
                self._roles.clear()
            # Whether the trunk asks for a certificate is remembered too: it is a
            # Python property of the config, asked on every message otherwise.
            known = self._roles[ip] = (role, trunk, trunk is not None and trunk.needs_certificate)
        role, trunk, needs_certificate = known
        if needs_certificate and not certificate_matches(trunk, source.peer_cert_der):
            return None
        return role

    def _trunk_of(self, ip: str) -> Any:
        """The trunk :meth:`_role` found for ``ip``, or None."""
        known = self._roles.get(ip)
        return known[1] if known is not None else None

    def _trusted_name(self, ip: str) -> str:
        trunk = self._trunk_of(ip)
        return str(trunk.name) if trunk is not None else ip

    def _trunk_numbers(self, name: str) -> str:
        for trunk in self.config.trunks:
            if trunk.name == name:
                return str(getattr(trunk, "numbers", "any"))
        return "any"

    def _check_carrier_numbers(self, req: Request, ip: str) -> None:
        """A trunk that promises E.164 numbers gets 484/400 when it breaks the promise."""
        trunk = self._trunk_of(ip)
        if trunk is None or getattr(trunk, "numbers", "any") != "e164":
            return
        if not is_e164(req.uri.user):
            raise SipError("Request-URI is not an E.164 number", status_hint=484)
        if not is_e164(req.from_.uri.user):
            raise SipError("From is not an E.164 number", status_hint=400)

    def forget_roles(self) -> None:
        self._roles.clear()

    # ------------------------------------------------------------ health probes
    async def _probe_loop(self) -> None:
        loop = self._get_loop()
        while True:
            await asyncio.sleep(1.0)
            try:
                for target in self.router.probe_targets(loop.time()):
                    self._probe(target)
                for dialog in self.dialogs.expire(time.time()):
                    # No BYE ever came (a lost peer): forget the call.
                    self.log("warning", "dialog_expired", call_id=dialog.call_id)
                    self._end_call(dialog, "max-age")
                if self.media is not None:
                    self._media_timeouts(loop.time())
                self.admission.expire()
            except Exception as exc:
                self.log("error", "probe_error", error=repr(exc))

    def _probe(self, target: Any) -> None:
        dest = Destination(target.transport, target.host, target.port)
        host, _ = self._local(dest.transport)
        headers: list[tuple[str, Any]] = [
            ("Via", self._our_via(dest.transport, new_branch())),
            ("Max-Forwards", "70"),
            ("From", f"<sip:sipedge@{format_host(host)}>;tag={secrets.token_hex(6)}"),
            ("To", f"<{target.uri}>"),
            ("Call-ID", secrets.token_hex(12)),
            ("CSeq", "1 OPTIONS"),
        ]
        req = Request("OPTIONS", target.uri, headers)
        txn = NonInviteClientTransaction(
            req, reliable=dest.transport != "udp", config=self.timer_config
        )
        loop = self._get_loop()

        def done(resp: Response | None) -> None:
            # Any answer but 408/503 proves the target is alive (§11.2).
            ok = resp is not None and resp.status not in (408, 503)
            self.router.report_probe(target, ok, loop.time())

        cctx = _ClientCtx(txn, dest, None, target, on_final=done)
        self._client[txn.key] = cctx
        self._run(cctx, txn.start(loop.time()))
