"""The running proxy: composes the parts, handles signals, starts and stops in order.

Start-up order (each part needs the one before it):
  TLS contexts -> echo endpoint (when ``upstream.echo``) -> router -> transport
  layer -> proxy -> transport.start() (bind) -> proxy.start() (probes) -> "ready".
Shut-down is the reverse, after the drain.

Signals:
- SIGTERM / SIGINT: drain (new INVITEs get 503, live dialogs may finish for up
  to ``proxy.drain_grace`` seconds), close everything, exit 0.  A second signal
  during the drain cuts it short.
- SIGHUP: reload the TLS certificate and key from the same sources and swap the
  listeners' context; on failure log an error and keep serving with the old one.

A start-up failure the operator can fix (a port in use, an unreadable
certificate) is one log line naming the key and the problem, and exit status 2,
like a bad configuration: never a traceback.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import errno
import os
import signal
import socket
import threading
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from edge import __version__
from edge.config import Config, ConfigError, HostPort
from edge.log import LogFn, Logger
from sip import _compiled

EXIT_OK = 0
EXIT_FAILED = 1  # a bug: logged with its traceback as a field
EXIT_CONFIG = 2  # the operator's to fix: configuration, ports, certificates

CLOSE_TIMEOUT = 5.0  # seconds one part may take to close before we go on without it
SUPPRESSED_FLUSH_INTERVAL = 5.0


@dataclass(frozen=True, slots=True)
class Components:
    """The constructors :func:`serve` uses; tests substitute fakes."""

    tls: Any  # a module with server_context, client_context, load_pem_pair
    transport_layer: Callable[..., Any]
    echo_endpoint: Callable[..., Any]
    router: Callable[..., Any]
    proxy: Callable[..., Any]
    # (config, log) -> (edge.admission.Admission, closer); None: the proxy's default.
    admission: Callable[..., Any] | None = None
    # (path, handlers, log) -> edge.control.ControlServer; None: no control socket.
    control: Callable[..., Any] | None = None
    # (parts, log) -> edge.metrics.Metrics; None: no metrics endpoint.
    metrics: Callable[..., Any] | None = None


def real_components() -> Components:
    """The real parts (imported here so that ``sipedge check-config`` stays light)."""
    from edge import control, echo, metrics, proxy, routing, tls, transport

    return Components(
        tls=tls,
        transport_layer=transport.TransportLayer,
        echo_endpoint=echo.EchoEndpoint,
        router=routing.Router,
        proxy=proxy.Proxy,
        admission=open_admission,
        control=control.ControlServer,
        metrics=metrics.Metrics,
    )


def open_admission(cfg: Config, *, log: LogFn) -> tuple[Any, Callable[[], None]]:
    """The admission policy with its credential database, audit log and state store opened.

    Returns the policy and a function that closes what it opened.  A database
    or audit file that cannot be opened is a :class:`StartupError` naming the key.
    An unreachable Redis (``state.backend = "redis"``) is not: the store starts
    on its local state and connects when Redis answers (edge/state_redis.py).
    """
    from edge.admission import Admission
    from edge.audit import AuditLog
    from edge.credentials import CredentialStore
    from edge.state import MemoryStateStore

    try:
        Path(cfg.auth.database).parent.mkdir(parents=True, exist_ok=True)
        credentials = CredentialStore(cfg.auth.database)
    except Exception as e:  # sqlite3.Error or OSError: the operator's to fix
        raise StartupError("auth.database", f"cannot open {cfg.auth.database!r}: {e}") from None
    try:
        audit = AuditLog(
            cfg.audit.path,
            per_source=cfg.audit.max_per_second,
            flush_interval=cfg.audit.flush_interval,
        )
    except OSError as e:
        credentials.close()
        raise StartupError("audit.path", f"cannot open {cfg.audit.path!r}: {e.strerror}") from None
    if cfg.auth.jwt_key is None:
        log("info", "bearer_disabled", reason=f"${cfg.auth.jwt_key_env} is not set")
    store: Any
    nonce_secret: bytes | None = None
    if cfg.state.backend == "redis":
        from edge.state_redis import RedisStateStore

        store = RedisStateStore(
            cfg.state.url,
            key_prefix=cfg.state.key_prefix,
            timeout=cfg.state.timeout,
            sync_interval=cfg.state.sync_interval,
            nonce_ttl=max(305.0, cfg.auth.nonce_lifetime + 5.0),
            log=log,
        )
        # Nonces issued by one edge must verify on the others (a client may
        # answer a challenge through another one): one secret for all of them.
        nonce_secret = store.shared_secret("nonce")
        log("info", "state_shared", backend="redis", key_prefix=cfg.state.key_prefix)
    else:
        store = MemoryStateStore()
    admission = Admission(
        cfg, store, credentials=credentials, audit=audit, nonce_secret=nonce_secret
    )

    def close() -> None:
        audit.flush_suppressed(final=True)
        audit.close()
        credentials.close()
        if hasattr(store, "close"):
            store.close()

    return admission, close


class StartupError(Exception):
    """A start-up failure the operator can fix: ``key`` names the config key."""

    def __init__(self, key: str, problem: str, status: int = EXIT_CONFIG) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem
        self.status = status


def run(
    config: Config,
    *,
    log: LogFn | None = None,
    reload_config: Callable[[], Config] | None = None,
) -> int:
    """Run the proxy on uvloop until a signal stops it; the process exit status."""
    import uvloop

    tune_gc()
    try:
        return uvloop.run(serve(config, log=log, reload_config=reload_config))
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were in place
        return 130


#: The collector's thresholds while sipedge runs (tune_gc): gen 0, gen 1, gen 2.
GC_THRESHOLDS: Final = (100_000, 5, 1000)


def tune_gc() -> None:
    """Fewer, cheaper garbage collections for a process that lives on short objects.

    Every message makes a few hundred short-lived objects; with CPython's default
    gen-0 threshold (700) the collector runs several times per call and its
    full passes stall the loop long enough for UDP retransmissions.  Freezing
    what start-up made (modules, config) takes it out of every later pass.
    Measured with sipp at 250 calls/s: 18-24 failed calls of 2500 and
    2.4-2.5 ms CPU per call before, 0 failed and 2.0-2.2 ms after.

    A gen-1 pass every 5 gen-0 passes rather than 50: it walks what the gen-0
    passes kept since the last one, which while calls accumulate (a ramp) is every
    call of the last 32 s.  Ramping to 2000 calls/s, the pass at 50 stalled the
    loop 429 ms; at 5 the passes took 55-92 ms.  The third threshold goes from 100
    to 1000 so that full collections stay as rare as they were (every 5000 gen-0
    passes).
    """
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def serve(
    config: Config,
    *,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    log: LogFn | None = None,
    components: Components | None = None,
    reload_config: Callable[[], Config] | None = None,
) -> int:
    """Start everything, set ``ready``, serve until ``stop`` (or a signal), shut down.

    Returns the exit status: 0 after a clean stop, 2 for a start-up failure
    the operator can fix, 1 for anything else.
    """
    app = _App(config, log if log is not None else Logger(), components)
    app.reload_config = reload_config
    return await app.serve(ready, stop if stop is not None else asyncio.Event())


class _App:
    def __init__(self, config: Config, log: LogFn, components: Components | None) -> None:
        self.config = config
        self.log = log
        self._components = components
        self.transport: Any = None
        self.proxy: Any = None
        self.echo: Any = None
        # (name, close) of what started, in order; closed in reverse.
        self._started: list[tuple[str, Callable[[], Awaitable[Any]]]] = []
        self._admission: Any = None
        self._router: Any = None
        self._metrics: Any = None
        # Re-reads the configuration file for SIGHUP (None: only the certificate).
        self.reload_config: Callable[[], Config] | None = None
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._signals: list[int] = []

    # ------------------------------------------------------------ the whole life
    async def serve(self, ready: asyncio.Event | None, stop: asyncio.Event) -> int:
        self._stop = stop
        self._install_signals()
        flusher = None
        if isinstance(self.log, Logger):
            flusher = asyncio.create_task(self._flush_suppressed(self.log))
        try:
            try:
                await self._start()
            except StartupError as e:
                self.log("error", "startup_failed", setting=e.key, problem=e.problem)
                await self._close_all()
                return e.status
            except Exception as e:
                self.log(
                    "error",
                    "startup_failed",
                    problem=f"{type(e).__name__}: {e}",
                    traceback=traceback.format_exc(),
                )
                await self._close_all()
                return EXIT_FAILED
            self._log_ready()
            if ready is not None:
                ready.set()
            await stop.wait()
            await self._drain()
            await self._close_all()
            self.log("info", "stopped")
            return EXIT_OK
        finally:
            if flusher is not None:
                flusher.cancel()
            self._remove_signals()

    async def _start(self) -> None:
        cfg = self.config
        try:
            comps = self._components or real_components()
        except ImportError as e:
            raise StartupError(
                "sipedge", f"a part is missing from this build: {e}", EXIT_FAILED
            ) from None
        self._warn_about_config()
        parts: Any = None
        if comps.metrics is not None:
            from edge.metrics import Parts

            # First, so that /healthz answers during start-up and drain; closed last.
            parts = Parts(config=cfg)
            metrics = comps.metrics(parts, log=self.log)
            try:
                await metrics.start(cfg.metrics.address)
            except OSError as e:
                raise StartupError(
                    "metrics.address", _bind_problem(cfg.metrics.address, e)
                ) from None
            self._started.append(("metrics", metrics.close))
            self._metrics = metrics

        tls_server = self._server_context(comps) if cfg.listen.tls or cfg.listen.wss else None
        tls_client = comps.tls.client_context()

        echo_address: tuple[str, int] | None = None
        if cfg.upstream.echo:
            # The echo reflects RTP on the C data plane too, unless [media] fast_path = false.
            self.echo = comps.echo_endpoint(cfg.echo, log=self.log, fast_path=cfg.media.fast_path)
            try:
                await self.echo.start()
            except OSError as e:
                raise StartupError("echo.address", _bind_problem(cfg.echo.address, e)) from None
            self._started.append(("echo", self.echo.close))
            host, port = self.echo.sip_address[:2]
            echo_address = (host, port)

        router = self._router = comps.router(cfg, echo_address=echo_address, log=self.log)
        # The transport needs the proxy's callback and the proxy needs the
        # transport: the lambda looks the proxy up when the first message arrives.
        self.transport = comps.transport_layer(
            listen=cfg.listen,
            limits=cfg.limits,
            tls_server=tls_server,
            tls_client=tls_client,
            on_message=lambda data, source: self.proxy.on_message(data, source),
            log=self.log,
        )
        if comps.admission is not None:
            admission, close_admission = comps.admission(cfg, log=self.log)
            self._admission = admission
            self._started.append(("admission", _async(close_admission)))
            self.proxy = comps.proxy(cfg, self.transport, router, log=self.log, admission=admission)
        else:
            self.proxy = comps.proxy(cfg, self.transport, router, log=self.log)
        deliver_to = getattr(self.transport, "deliver_to", None)  # tests' fakes lack it
        if deliver_to is not None:
            # The proxy's method itself from here on: the lambda is a Python frame
            # per message in front of the compiled proxy.
            deliver_to(self.proxy.on_message)
        try:
            await self.transport.start()
        except OSError as e:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.transport.close(), CLOSE_TIMEOUT)
            raise _listen_error(cfg, e) from None
        self._started.append(("transport", self.transport.close))
        try:
            await self.proxy.start()  # starts the media relay when [media] is enabled
        except ConfigError as e:
            raise StartupError(e.key, e.problem) from None
        self._started.append(("proxy", self.proxy.close))
        if parts is not None:
            parts.echo, parts.router, parts.transport, parts.proxy = (
                self.echo,
                router,
                self.transport,
                self.proxy,
            )
            self.proxy.metrics = self._metrics
        if comps.control is not None:
            await self._start_control(comps.control)

    async def _start_control(self, make_server: Callable[..., Any]) -> None:
        """The local control socket: ``sipedge bans``, ``sipedge calls``, ``sipedge reload``."""
        from edge import control

        path = control.default_path(self.config)
        handlers = {
            "bans.list": self._ctl_bans_list,
            "bans.remove": self._ctl_bans_remove,
            "calls.list": self._ctl_calls_list,
            "calls.show": self._ctl_calls_show,
            "reload": self._ctl_reload,
        }
        server = make_server(path, handlers, log=self.log)
        try:
            await server.start()
        except control.ControlError as e:
            raise StartupError("control.path", str(e)) from None
        except OSError as e:
            raise StartupError(
                "control.path", f"cannot listen on {path}: {e.strerror or e}"
            ) from None
        self._started.append(("control", server.close))

    def _ctl_bans_list(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        adm = self._admission
        if adm is None:
            return []
        return [dataclasses.asdict(b) for b in adm.store.bans(adm.clock())]

    def _ctl_bans_remove(self, args: dict[str, Any]) -> dict[str, Any]:
        adm = self._admission
        address = str(args.get("address", ""))
        removed = bool(adm is not None and adm.store.unban(address))
        if removed:
            self.log("info", "ban_removed", address=address, by="control socket")
        return {"removed": removed}

    def _call_info(self, dialog: Any, full: bool = False) -> dict[str, Any]:
        media = getattr(self.proxy, "media", None)
        key = dialog.extra.get("media_key")
        info: dict[str, Any] = {
            "call_id": dialog.call_id,
            "from_uri": dialog.from_uri,
            "to_uri": dialog.to_uri,
            "caller": dialog.caller,
            "callee": dialog.callee,
            "state": dialog.state.value,
            "created": dialog.created,
            "answered": dialog.answered,
            "media": media.session_info(key) if media is not None and key else None,
        }
        if full:
            info["from_tag"] = dialog.from_tag
            info["to_tag"] = dialog.to_tag
            info["customer_id"] = dialog.extra.get("customer_id")
        return info

    def _ctl_calls_list(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        return [self._call_info(d) for d in self.proxy.dialogs]

    def _ctl_calls_show(self, args: dict[str, Any]) -> dict[str, Any]:
        from edge import control

        call_id = str(args.get("call_id", ""))
        for dialog in self.proxy.dialogs:
            if dialog.call_id == call_id:
                return self._call_info(dialog, full=True)
        raise control.ControlError("no such call")

    def _ctl_reload(self, args: dict[str, Any]) -> dict[str, Any]:
        from edge import control

        names = []
        if self.reload_config is not None:
            if not self.reload_policy():
                raise control.ControlError("config reload failed: see the log")
            names.append("config")
        if self.config.listen.tls or self.config.listen.wss:
            if not self.reload():
                raise control.ControlError("TLS reload failed: see the log")
            names.append("tls")
        if self._admission is not None and self._admission.audit is not None:
            self._admission.audit.reopen()
            names.append("audit")
        return {"reloaded": names}

    async def _drain(self) -> None:
        grace = self.config.proxy.drain_grace
        drain = asyncio.ensure_future(self.proxy.drain(grace))
        force = asyncio.ensure_future(self._force.wait())
        # The proxy bounds its own drain by ``grace``; the margin covers a drain
        # that does not, so that SIGTERM always ends the process.
        done, _ = await asyncio.wait(
            {drain, force}, timeout=grace + CLOSE_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        force.cancel()
        if drain not in done:
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await drain
            self.log("warning", "drain_cut_short", forced=self._force.is_set())
        elif drain.exception() is not None:
            self.log("error", "drain_failed", problem=repr(drain.exception()))

    async def _close_all(self) -> None:
        while self._started:
            name, close = self._started.pop()
            try:
                await asyncio.wait_for(close(), CLOSE_TIMEOUT)
            except TimeoutError:
                self.log("warning", "close_timeout", part=name, seconds=CLOSE_TIMEOUT)
            except Exception as e:
                self.log("error", "close_failed", part=name, problem=f"{type(e).__name__}: {e}")

    # ------------------------------------------------------------ TLS
    def _server_context(self, comps: Components) -> Any:
        """A server context from the configured sources; raises StartupError."""
        tls = self.config.tls
        cert_b64 = key_b64 = None
        if tls.cert_pem is not None and tls.key_pem is not None:
            # edge.tls takes base64 from the environment; we decoded it to validate it.
            cert_b64 = base64.b64encode(tls.cert_pem).decode("ascii")
            key_b64 = base64.b64encode(tls.key_pem).decode("ascii")
        try:
            cert_pem, key_pem = comps.tls.load_pem_pair(tls.cert, tls.key, cert_b64, key_b64)
        except (OSError, ValueError) as e:
            raise StartupError("tls.cert", str(e)) from None
        client_ca = None
        if tls.client_ca is not None:
            try:
                client_ca = tls.client_ca.read_bytes()
            except OSError as e:
                raise StartupError("tls.client_ca", f"{tls.client_ca}: {e.strerror}") from None
        try:
            return comps.tls.server_context(
                cert_pem, key_pem, client_ca=client_ca, verify_client=tls.verify_client
            )
        except (OSError, ValueError) as e:
            key = "tls.client_ca" if "CA" in str(e) else "tls.cert"
            raise StartupError(key, str(e)) from None

    def reload(self) -> bool:
        """SIGHUP: re-read the certificate; keep the old context on failure."""
        if self.transport is None or not (self.config.listen.tls or self.config.listen.wss):
            self.log("info", "reload_skipped", reason="no TLS listeners")
            return False
        comps = self._components or real_components()
        try:
            ctx = self._server_context(comps)
            self.transport.set_tls_server_context(ctx)
        except StartupError as e:
            self.log("error", "tls_reload_failed", setting=e.key, problem=e.problem)
            return False
        except Exception as e:
            self.log("error", "tls_reload_failed", problem=f"{type(e).__name__}: {e}")
            return False
        self.log("info", "tls_reloaded", source=self._tls_source())
        return True

    def reload_policy(self) -> bool:
        """SIGHUP: re-read the file; apply trunks, limits, bans and scanners in place.

        Live calls are untouched.  A file that no longer validates changes
        nothing (one error line naming the key); sections that only a restart
        applies are named in a warning.
        """
        if self.reload_config is None or self.proxy is None:
            return False
        try:
            new = self.reload_config()
        except ConfigError as e:
            self.log("error", "config_reload_failed", setting=e.key, problem=e.problem)
            return False
        old = self.config
        live = ("trunks", "ratelimit", "bans", "scanners")
        merged = dataclasses.replace(old, **{name: getattr(new, name) for name in live})
        stale = [
            f.name
            for f in dataclasses.fields(old)
            if f.name not in live and getattr(old, f.name) != getattr(new, f.name)
        ]
        self.config = merged
        self.proxy.config = merged
        if self._router is not None and hasattr(self._router, "set_trunks"):
            self._router.set_trunks(merged.trunks)
        if hasattr(self.proxy, "forget_roles"):
            self.proxy.forget_roles()
        if self._admission is not None:
            self._admission.reconfigure(merged)
        self.log("info", "config_reloaded", applied=list(live), trunks=len(merged.trunks))
        if stale:
            self.log("warning", "config_restart_required", sections=stale)
        return True

    def _tls_source(self) -> str:
        tls = self.config.tls
        return tls.pem_source if tls.cert_pem is not None else f"{tls.cert}, {tls.key}"

    # ------------------------------------------------------------ signals
    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread can receive signals (an embedded serve())
        loop = asyncio.get_running_loop()
        for sig, handler in (
            (signal.SIGTERM, self._on_stop_signal),
            (signal.SIGINT, self._on_stop_signal),
            (signal.SIGHUP, self._on_hup),
        ):
            try:
                loop.add_signal_handler(sig, handler, sig)
            except (NotImplementedError, RuntimeError):
                continue
            self._signals.append(sig)

    def _remove_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in self._signals:
            loop.remove_signal_handler(sig)
        self._signals.clear()

    def _on_stop_signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        if not self._stop.is_set():
            self.log("info", "stopping", signal=name, drain_grace=self.config.proxy.drain_grace)
            self._stop.set()
        else:
            self.log("warning", "stopping_now", signal=name)
            self._force.set()

    def _on_hup(self, sig: int) -> None:
        self.log("info", "reload", signal=signal.Signals(sig).name)
        self.reload()
        self.reload_policy()
        if self._admission is not None and self._admission.audit is not None:
            # Log rotation: the rotated file was renamed away; write to a new one.
            self._admission.audit.reopen()

    # ------------------------------------------------------------ logging
    def _log_ready(self) -> None:
        cfg = self.config
        fields: dict[str, Any] = {
            "version": __version__,
            "pid": os.getpid(),
            "udp": [str(a) for a in cfg.listen.udp],
            "tcp": [str(a) for a in cfg.listen.tcp],
            "tls": [str(a) for a in cfg.listen.tls],
            "wss": [str(a) for a in cfg.listen.wss],
            "upstream": cfg.upstream.resolved_default(),
        }
        if cfg.listen.advertise:
            fields["advertise"] = cfg.listen.advertise
        if self.echo is not None:
            host, port = self.echo.sip_address[:2]
            fields["echo"] = str(HostPort(host, port))
        if cfg.listen.tls or cfg.listen.wss:
            fields["tls_source"] = self._tls_source()
        compiled, why = _compiled.status()
        # "compiled": true, or why the signalling path runs as plain Python (slower).
        fields["compiled"] = True if compiled else why
        self.log("info", "ready", **fields)

    def _warn_about_config(self) -> None:
        cfg = self.config
        wildcard = [
            str(a)
            for a in (*cfg.listen.udp, *cfg.listen.tcp, *cfg.listen.tls, *cfg.listen.wss)
            if a.host in ("0.0.0.0", "::")
        ]
        if wildcard and not cfg.listen.advertise:
            # Via and Record-Route would carry an address nobody can reach.
            self.log(
                "warning",
                "advertise_missing",
                setting="listen.advertise",
                problem="listening on a wildcard address without listen.advertise",
                addresses=wildcard,
            )

    async def _flush_suppressed(self, logger: Logger) -> None:
        while True:
            await asyncio.sleep(SUPPRESSED_FLUSH_INTERVAL)
            logger.flush_suppressed()


# ---------------------------------------------------------------- bind errors


def _async(close: Callable[[], None]) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        close()

    return run


def _bind_problem(address: HostPort, e: OSError) -> str:
    if e.errno == errno.EADDRINUSE:
        return f"{address} is already in use"
    if e.errno == errno.EADDRNOTAVAIL:
        return f"{address} is not an address of this host"
    if e.errno == errno.EACCES:
        return f"{address}: permission denied (ports below 1024 need privileges)"
    return f"cannot bind {address}: {e.strerror or e}"


def _listen_error(cfg: Config, e: OSError) -> StartupError:
    """Name the listener that could not bind.

    The transport's error may not say which address failed; once it has closed
    what it opened, trying each configured address finds the culprit.
    """
    for kind, sock_type in (
        ("udp", socket.SOCK_DGRAM),
        ("tcp", socket.SOCK_STREAM),
        ("tls", socket.SOCK_STREAM),
        ("wss", socket.SOCK_STREAM),
    ):
        for i, address in enumerate(getattr(cfg.listen, kind)):
            problem = _try_bind(address, sock_type)
            if problem is not None:
                return StartupError(f"listen.{kind}[{i}]", _bind_problem(address, problem))
    return StartupError("listen", f"cannot start the listeners: {e.strerror or e}")


def _try_bind(address: HostPort, sock_type: int) -> OSError | None:
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    try:
        with socket.socket(family, sock_type) as s:
            if sock_type == socket.SOCK_STREAM:
                # As asyncio's servers do: a port in TIME_WAIT is not "in use".
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((address.host, address.port))
    except OSError as e:
        return e
    return None
