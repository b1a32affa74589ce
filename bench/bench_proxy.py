"""Proxy load test: sipedge against Kamailio 5.6, side by side, on this machine.

For each system under test (SUT) and each transport it measures, in one run:

(a) calls per second sustained with fewer than 0.1% failed calls: the call rate steps up a
    fixed ladder (each step a bounded number of calls) until a step fails, meaning more
    than 0.1% of its calls failed or the generator could not keep the rate;
(b) CPU seconds the SUT spends per 1000 calls at a fixed rate (utime+stime of the SUT and
    all its processes from /proc/PID/stat; median of several runs).  Both systems run at
    once, idle but for the run that loads one of them, and take turns run by run, so that
    a drift of the machine between minutes falls on both alike.  A run's CPU counts from
    its first call until ``drain_s`` after its last: what the SUT does because of those
    calls, its transactions' timers running out included (sipedge's last ones 32 s after
    a call, Kamailio's wait timer 5 s).  Besides the headline rate, a second, higher rate
    shows how the cost per call falls as the SUT sleeps less between messages.

The SUT is pinned to CPU 0; the load (sipp UAC, sipp UAS, stunnel) to CPU 1, as with
``taskset -c``.  Calls: INVITE (with SDP) / 100 / 180 / 200 / ACK / hold / BYE / 200,
with no RTP: signalling only, media passthrough (sipedge with ``[media] enabled = false``,
which leaves SDP untouched; Kamailio without rtpengine).  The UAC is tests/sipp/proxy_uac.xml, the
UAS tests/sipp/proxy_uas.xml (the scenarios of the end-to-end tests).

Transports (the caller's leg; the upstream leg is UDP in both):
- udp: sipp UDP -> SUT UDP -> sipp UAS UDP;
- tls: sipp TCP -> stunnel client (on the load CPU) -> one TLS connection -> SUT TLS port
  -> sipp UAS UDP.  One long-lived connection, like a carrier trunk: this measures TLS
  record work and framing, not handshakes.

Kamailio is bench/kamailio/proxy.cfg (tm + rr + sl + dispatcher, record-routing, no
auth), its TLS through the tls module (Debian kamailio-tls-modules).  sipedge is
``sipedge run`` with a generated config whose upstream set points at the sipp UAS.  A SUT
that does not start gets the row "not runnable (reason)" instead of numbers.

Results: a markdown table on stdout and in bench/results/proxy-DATE.md (with a JSON twin),
with the ratio sipedge/Kamailio per column.

With ``--media`` it compares instead, at a fixed call rate, calls that carry RTP (the sipp
UAC plays /usr/share/sip-tester/g711a.pcap, the UAS echoes it with -rtp_echo): sipedge
with its relay on (plain RTP both sides) against Kamailio with
bench/kamailio/proxy-rtpengine.cfg driving an rtpengine daemon of its own (userspace
forwarding).  CPU of the SUT per 1000 calls (Kamailio's processes + rtpengine; sipedge's
one process), per relayed packet (the SUT's own count), failed calls, and a tshark check
on lo that the media went through all four hops.  Results in
bench/results/proxy-media-DATE.md.  See bench/README.md.

    .venv/bin/python bench/bench_proxy.py [--quick] [--systems kamailio,kamailio-tlsf,...]
                                          [--transports udp,tls] [--media
                                          [--media-rate CPS] [--media-calls N]]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sip import _compiled
from tests.peers import (
    REPO,
    KamailioProc,
    NotRunnable,
    PeerError,
    Proc,
    ProcGroup,
    ProxyAddresses,
    SipedgeProc,
    Stunnel,
    TestCerts,
    cpu_seconds,
    find_binary,
    free_port,
    free_udp_block,
    make_test_certs,
    missing_binary_message,
    sip_uri,
    sipedge_binary,
    sipp_uac,
    sipp_uas,
    wait_for_port,
)
from tests.peers_media import Capture

RESULTS = Path(__file__).resolve().parent / "results"
SUT_CPU = 0
LOAD_CPU = 1
CALLER = "127.0.0.1"
UPSTREAM = "127.0.0.2"
MAX_FAILED_RATIO = 0.001  # "< 0.1% failed calls"
# A multi-process proxy (Kamailio) may pass the 200 before the 180 over UDP; by default sipp
# aborts a call on such a late provisional, which RFC 3261 section 17.1.1.2 has the caller
# simply drop.  So sipp ignores unexpected messages here; a call still fails if an expected
# message does not come (-recv_timeout) or the call cannot be completed.
SIPP_LENIENT = ("-default_behaviors", "all,-abortunexp")
# sipp's socket buffers default to 64 KB: at thousands of calls per second a burst overflows
# them and the load generator, not the SUT, drops datagrams.  (The kernel caps this at
# net.core.rmem_max / wmem_max.)
SIPP_BUFFERS = ("-buff_size", "4194304")

Transport = Literal["udp", "tls"]


@dataclass(frozen=True)
class Plan:
    """How much to run: the rate search, calls per step, the fixed-rate CPU runs.

    The search doubles the rate from ``start_rate`` until a step is not sustained (at most
    ``max_rate``), then bisects between the last good and the first bad rate ``bisect``
    times: at most about log2(max/start) + 1 + bisect steps, each ``step_seconds`` of calls.
    """

    start_rate: int
    max_rate: int
    bisect: int
    step_seconds: float
    settle_seconds: float
    hold_ms: int
    recv_timeout_ms: int
    fixed_rate: int
    fixed_calls: int
    fixed_runs: int
    drain_s: float  # after a CPU run's last call, counted with the run
    extra_rates: tuple[tuple[int, int], ...] = ()  # (rate, calls) of further CPU runs


FULL = Plan(
    start_rate=200,
    max_rate=6400,
    bisect=3,
    step_seconds=4.0,
    settle_seconds=1.0,
    hold_ms=100,
    recv_timeout_ms=5000,
    fixed_rate=200,
    fixed_calls=1500,
    # Five pairs: runs taken back to back still spread by about +-6% (the VM), and a
    # ratio judged against parity needs its median to move less than that.
    fixed_runs=5,
    drain_s=33.0,
    extra_rates=((800, 6000),),
)
QUICK = Plan(
    start_rate=200,
    max_rate=3200,
    bisect=0,
    step_seconds=1.0,
    settle_seconds=0.0,
    hold_ms=100,
    recv_timeout_ms=3000,
    fixed_rate=200,
    fixed_calls=300,
    fixed_runs=1,
    drain_s=5.0,
)


@dataclass
class Step:
    """One step of the rate search (or one fixed-rate run)."""

    rate: int
    calls: int
    successful: int
    failed: int
    uas_failed: int
    seconds: float
    lag_s: float  # how much later than scheduled the last call ended
    invite_ms: float | None  # mean INVITE -> 200 time seen by the caller
    sut_cpu_s: float
    load_cpu_s: float
    other_cpu_s: float  # time CPU 0 spent on anything but the SUT (other work, IRQs)
    returncode: int | None
    stopped_early: bool = False
    note: str = ""
    total_s: float = 0.0  # with the set-up and tear-down of the peers
    sut_cpu_drained_s: float | None = None  # CPU runs: sut_cpu_s plus the drain after

    @property
    def failed_ratio(self) -> float:
        return (self.calls - self.successful) / self.calls if self.calls else 1.0

    @property
    def late(self) -> bool:
        """The SUT (or sipp) fell behind: calls ended well after their schedule."""
        return self.lag_s > max(1.5, 0.25 * self.calls / self.rate)

    @property
    def sustained(self) -> bool:
        return self.failed_ratio < MAX_FAILED_RATIO and not self.late


@dataclass
class Row:
    system: str
    transport: str
    runnable: bool = True
    reason: str = ""
    max_cps: int | None = None
    limited_by: str = ""
    sut_cpu_at_max: float | None = None  # share of one core during the best step
    load_cpu_at_max: float | None = None
    invite_ms_at_max: float | None = None
    other_cpu_at_max: float | None = None
    cpu_per_1000: float | None = None
    cpu_per_1000_runs: list[float] = field(default_factory=list)
    fixed_failed: int = 0
    # The further CPU rates: rate (as text, for JSON) -> median, and every run.
    cpu_per_1000_at: dict[str, float] = field(default_factory=dict)
    cpu_per_1000_runs_at: dict[str, list[float]] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)


# ---------------------------------------------------------------- systems under test

#: Kamailio as a SUT, by name, and what its command line gets on top of the common one.
#: "kamailio" is the package as installed: its memory managers are the default, qm,
#: which this Debian build compiles with DBG_SR_MEMORY (kamailio -I).  Under TLS,
#: qm_malloc was 87% of the instructions of the process doing the TLS work
#: (callgrind, 200 calls).  "kamailio-tlsf" runs both pools (shm, pkg) on TLSF, the
#: fast manager an operator tuning for load picks: the stronger reference.
KAMAILIO_SYSTEMS: dict[str, list[str]] = {
    "kamailio": [],
    "kamailio-tlsf": ["-x", "tlsf", "-X", "tlsf"],
    # The same with what sipedge does per call besides relaying (proxy.cfg's
    # WITH_CALL_STATE): a dialog table and two accounting lines per call.
    "kamailio-tlsf-calls": ["-x", "tlsf", "-X", "tlsf", "-A", "WITH_CALL_STATE"],
    # And sipedge's guard on every message (WITH_GUARD): ban lookup, validation
    # (sanity), the allowlist; the edge a carrier would run Kamailio as.
    "kamailio-tlsf-edge": ["-x", "tlsf", "-X", "tlsf", "-A", "WITH_CALL_STATE", "-A", "WITH_GUARD"],
}
PASSTHROUGH_ONLY: Final = frozenset({"kamailio-tlsf-calls", "kamailio-tlsf-edge"})


def start_sut(
    system: str, workdir: Path, certs: TestCerts, uas_uri: str, procs: ProcGroup
) -> ProxyAddresses:
    """Start the system under test on CPU 0; NotRunnable (with the reason) if it cannot."""
    if system in KAMAILIO_SYSTEMS:
        if find_binary("kamailio") is None:
            raise NotRunnable(missing_binary_message("kamailio", "kamailio"))
        tls_module = Path("/usr/lib/x86_64-linux-gnu/kamailio/modules/tls.so")
        kam = KamailioProc(
            workdir=workdir,
            certs=certs,
            targets=[uas_uri],
            tls=tls_module.exists(),
            cpu=SUT_CPU,
            fr_timer_ms=5000,
            shm_mb=2048,
        )
        kam.argv += KAMAILIO_SYSTEMS[system]
        procs.add(kam).start()
        return kam.wait_ready().addresses
    if system == "sipedge":
        if sipedge_binary() is None:
            raise NotRunnable("no sipedge console script (make install)")
        edge = SipedgeProc(
            workdir=workdir,
            certs=certs,
            upstream={
                "echo": False,
                "default": "pbx",
                "sets": [
                    {
                        "name": "pbx",
                        "algorithm": "round-robin",
                        "probe_interval": 0,
                        "targets": [{"uri": uas_uri}],
                    }
                ],
            },
            # Signalling only, SDP untouched: the like of plain Kamailio (no rtpengine).
            extra={"media": {"enabled": False}},
            cpu=SUT_CPU,
        )
        procs.add(edge).start()
        return edge.wait_ready().addresses
    raise ValueError(system)


def sut_pid(procs: ProcGroup) -> int:
    for p in procs.procs:
        if isinstance(p, KamailioProc | SipedgeProc):
            return p.pid
    raise PeerError("no system under test running")


# ---------------------------------------------------------------- one load run


def run_load(
    *,
    workdir: Path,
    procs: ProcGroup,
    certs: TestCerts,
    target: tuple[str, int],
    transport: Transport,
    uas_port: int,
    rate: int,
    calls: int,
    plan: Plan,
    name: str,
) -> Step:
    """One bounded run: a fresh UAS on ``uas_port`` and a UAC placing ``calls`` calls at
    ``rate`` through the SUT; SUT CPU measured over the UAC's run.  The UAC is stopped
    early once more than 0.1% of the calls have failed (the step has failed anyway)."""
    hold_ms = plan.hold_ms
    step_dir = workdir / name
    uas = sipp_uas(
        "proxy_uas",
        workdir=step_dir,
        name="uas",
        local_ip=UPSTREAM,
        port=uas_port,
        # Room for more calls than the UAC places: a stray retransmission arriving after its
        # call ended starts a new call in sipp, and a UAS that reached -m would then ignore
        # the last real INVITE.  It is stopped once the UAC is done.
        calls=calls * 2,
        timeout=calls / rate + 60,
        cpu=LOAD_CPU,
        extra=SIPP_LENIENT + SIPP_BUFFERS,
    )
    procs.add(uas).start()
    uas.wait_ready()
    remote = target
    tunnel: Stunnel | None = None
    if transport == "tls":
        tunnel = Stunnel.client(
            workdir=step_dir,
            accept=(CALLER, free_port(CALLER, "tcp")),
            connect=target,
            ca=certs.ca,
            debug=3,
            cpu=LOAD_CPU,
        )
        procs.add(tunnel).start()
        tunnel.wait_ready()
        remote = tunnel.accept
    uac = sipp_uac(
        "proxy_uac",
        remote,
        workdir=step_dir,
        name="uac",
        transport="udp" if transport == "udp" else "tcp",
        local_ip=CALLER,
        ruri=sip_uri(target[0], target[1], transport, "1000"),
        calls=calls,
        rate=rate,
        limit=max(200, rate * 4),
        hold_ms=hold_ms,
        timeout=calls / rate + 40,
        recv_timeout_ms=plan.recv_timeout_ms,
        cpu=LOAD_CPU,
        extra=SIPP_LENIENT + SIPP_BUFFERS,
    )
    pid = sut_pid(procs)
    cpu0 = cpu_seconds(pid)
    busy0 = cpu_busy_seconds(SUT_CPU)
    t0 = time.monotonic()
    procs.add(uac).start()
    uac_pid = uac.pid
    load0 = cpu_seconds(uas.pid, tree=False)
    load_uac = 0.0
    allowed = int(calls * MAX_FAILED_RATIO)
    stopped_early = False
    deadline = t0 + calls / rate + plan.recv_timeout_ms / 1000 + 40
    next_check = t0 + 0.5
    while uac.poll() is None and time.monotonic() < deadline:
        # Sample the UAC's CPU while it lives (a dead process has no /proc entry).
        load_uac = cpu_seconds(uac_pid, tree=False)
        if time.monotonic() >= next_check:
            next_check += 0.5
            if uac.result().failed > allowed:
                stopped_early = True
                break
        time.sleep(0.1)
    elapsed = time.monotonic() - t0
    cpu1 = cpu_seconds(pid)
    busy1 = cpu_busy_seconds(SUT_CPU)
    uac.stop()
    result = uac.result()
    load_uas = cpu_seconds(uas.pid, tree=False) - load0
    if stopped_early:
        uas.stop()
    # The UAC has seen every call end; the UAS (lingering for retransmissions, or waiting
    # for a message of a call its caller gave up) is stopped: the caller's count is the
    # verdict.
    uas_result = uas.stop_and_result()
    if tunnel is not None:
        tunnel.stop()
    # On schedule, the last call starts at calls/rate and ends a hold and the UAC's 1 s
    # timewait later.
    lag = elapsed - (calls / rate + hold_ms / 1000 + 1.0)
    note = ""
    if result.failed or result.successful < calls:
        first = next((ln for ln in result.errors.splitlines() if "Aborting" in ln), "")
        note = first[-160:]
    return Step(
        rate=rate,
        calls=calls,
        successful=result.successful,
        failed=result.failed,
        uas_failed=uas_result.failed,
        seconds=elapsed,
        lag_s=lag,
        invite_ms=_sipp_ms(result.stats.get("ResponseTime1(C)", "")),
        sut_cpu_s=cpu1 - cpu0,
        load_cpu_s=load_uac + load_uas,
        other_cpu_s=max(0.0, (busy1 - busy0) - (cpu1 - cpu0)),
        returncode=result.returncode,
        stopped_early=stopped_early,
        note=note,
    )


def cpu_busy_seconds(cpu: int) -> float:
    """Seconds CPU ``cpu`` has spent busy (not idle or waiting for I/O), from /proc/stat."""
    tick = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:]]
                # user nice system idle iowait irq softirq steal (guest is inside user)
                return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / tick
    raise PeerError(f"no cpu{cpu} in /proc/stat")


def cpu_softirq_seconds(cpu: int) -> float:
    """Seconds CPU ``cpu`` has spent in softirqs, from /proc/stat.  Over loopback a datagram
    is delivered to its receiver's socket in a softirq on the sender's CPU, accounted to no
    process: the SUT's sending shows up here."""
    tick = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                return int(line.split()[7]) / tick
    raise PeerError(f"no cpu{cpu} in /proc/stat")


class SocketDrops:
    """Datagrams the kernel dropped at UDP sockets (full receive buffer), per group of local
    ports, from the ``drops`` column of /proc/net/udp.  A relay's sockets live as long as
    their call, so :meth:`sample` is called every half second and keeps each socket's
    (inode's) highest count: drops in a socket's last half second may be missed."""

    def __init__(self, groups: dict[str, tuple[str, int, int]]) -> None:
        # name -> (IPv4 address, first port, last port)
        self.groups = {
            name: (_proc_net_ip(ip), low, high) for name, (ip, low, high) in groups.items()
        }
        self.seen: dict[str, dict[str, int]] = {name: {} for name in groups}
        self.base: dict[str, dict[str, int]] = {name: {} for name in groups}

    def sample(self, *, baseline: bool = False) -> None:
        with contextlib.suppress(OSError), open("/proc/net/udp") as f:
            next(f)
            for line in f:
                v = line.split()
                ip, port_hex = v[1].split(":")
                port, inode, drops = int(port_hex, 16), v[9], int(v[12])
                for name, (gip, low, high) in self.groups.items():
                    if ip == gip and low <= port <= high:
                        target = self.base if baseline else self.seen
                        target[name][inode] = max(target[name].get(inode, 0), drops)

    def totals(self) -> dict[str, int]:
        return {
            name: sum(n - self.base[name].get(inode, 0) for inode, n in seen.items())
            for name, seen in self.seen.items()
        }


def _proc_net_ip(ip: str) -> str:
    """An IPv4 address as /proc/net/udp spells it (little-endian hex)."""
    return "".join(f"{int(x):02X}" for x in reversed(ip.split(".")))


def _sipp_ms(value: str) -> float | None:
    """sipp's ``HH:MM:SS:uuuuuu`` as milliseconds."""
    try:
        h, m, sec, us = (int(x) for x in value.split(":"))
    except ValueError:
        return None
    return ((h * 60 + m) * 60 + sec) * 1000 + us / 1000


# ---------------------------------------------------------------- one row


def _preflight(transport: Transport) -> str | None:
    """Why rows of ``transport`` cannot run here (a missing load tool), or None."""
    if transport == "tls" and find_binary("stunnel4") is None and find_binary("stunnel") is None:
        return missing_binary_message("stunnel4", "stunnel4")
    if find_binary("sipp") is None:
        return missing_binary_message("sipp", "sip-tester")
    return None


@dataclass
class _CpuSut:
    """A SUT of the CPU runs, started once and loaded in turns."""

    system: str
    procs: ProcGroup
    target: tuple[str, int]
    uas_port: int
    pid: int


def measure_cpu(
    rows: dict[str, Row], transport: Transport, plan: Plan, workdir: Path, certs: TestCerts
) -> None:
    """(b) for every runnable row at once: the SUTs all started, then run by run in turns
    at the fixed rate (and each further rate), each run's CPU counted until ``drain_s``
    after its last call.  The next system's run fills most of that wait."""
    with contextlib.ExitStack() as stack:
        suts: list[_CpuSut] = []
        for system, row in rows.items():
            if not row.runnable:
                continue
            procs = stack.enter_context(ProcGroup())
            uas_port = free_port(UPSTREAM, "udp")
            try:
                addresses = start_sut(
                    system,
                    workdir / f"{system}-cpu",
                    certs,
                    sip_uri(UPSTREAM, uas_port, "udp"),
                    procs,
                )
            except (NotRunnable, PeerError) as e:
                row.runnable, row.reason = False, _one_line(str(e))
                continue
            suts.append(_CpuSut(system, procs, addresses.of(transport), uas_port, sut_pid(procs)))
        for rate, calls in ((plan.fixed_rate, plan.fixed_calls), *plan.extra_rates):
            runs = _cpu_runs(suts, rows, transport, rate, calls, plan, workdir, certs)
            for system, per_1000 in runs.items():
                row = rows[system]
                median = statistics.median(per_1000)
                if rate == plan.fixed_rate:
                    row.cpu_per_1000, row.cpu_per_1000_runs = median, per_1000
                else:
                    row.cpu_per_1000_at[str(rate)] = median
                    row.cpu_per_1000_runs_at[str(rate)] = per_1000


def _cpu_runs(
    suts: list[_CpuSut],
    rows: dict[str, Row],
    transport: Transport,
    rate: int,
    calls: int,
    plan: Plan,
    workdir: Path,
    certs: TestCerts,
) -> dict[str, list[float]]:
    """``plan.fixed_runs`` runs of each SUT at ``rate``, in turns: CPU s per 1000 calls."""
    runs: dict[str, list[float]] = {sut.system: [] for sut in suts}
    # Per SUT, its run still draining: CPU at its start, when its load ended, the step.
    draining: dict[str, tuple[float, float, Step]] = {}

    def settle(sut: _CpuSut) -> None:
        cpu0, ended, step = draining.pop(sut.system)
        time.sleep(max(0.0, ended + plan.drain_s - time.monotonic()))
        step.sut_cpu_drained_s = cpu_seconds(sut.pid) - cpu0
        runs[sut.system].append(step.sut_cpu_drained_s / step.calls * 1000)
        row = rows[sut.system]
        row.steps.append({"kind": f"cpu@{rate}", **asdict(step)})
        if rate == plan.fixed_rate:
            row.fixed_failed += step.calls - step.successful
        _progress(sut.system, transport, f"cpu@{rate}", step)

    for i in range(plan.fixed_runs):
        # Each round starts with the next SUT: a run overlaps the drain of the one
        # before it on CPU 0 (its timers running out), and in a fixed order each
        # system would always follow the same other one.
        shift = i % len(suts)
        for sut in (*suts[shift:], *suts[:shift]):
            if sut.system in draining:
                settle(sut)
            cpu0 = cpu_seconds(sut.pid)
            t_load = time.monotonic()
            step = run_load(
                workdir=workdir,
                procs=sut.procs,
                certs=certs,
                target=sut.target,
                transport=transport,
                uas_port=sut.uas_port,
                rate=rate,
                calls=calls,
                plan=plan,
                name=f"{sut.system}-{transport}-cpu{rate}-{i + 1:02d}",
            )
            step.total_s = time.monotonic() - t_load
            draining[sut.system] = (cpu0, time.monotonic(), step)
    for sut in suts:
        settle(sut)
    return runs


def measure_row(
    row: Row, transport: Transport, plan: Plan, workdir: Path, certs: TestCerts
) -> None:
    """(a) for one row: a fresh SUT, the rate doubled until a step fails, then bisected."""
    system = row.system
    with ProcGroup() as procs:
        uas_port = free_port(UPSTREAM, "udp")
        try:
            addresses = start_sut(system, workdir, certs, sip_uri(UPSTREAM, uas_port, "udp"), procs)
            target = addresses.of(transport)
        except (NotRunnable, PeerError) as e:
            row.runnable, row.reason = False, _one_line(str(e))
            return
        n = 0

        def load(rate: int, calls: int) -> Step:
            nonlocal n
            n += 1
            t_load = time.monotonic()
            step = run_load(
                workdir=workdir,
                procs=procs,
                certs=certs,
                target=target,
                transport=transport,
                uas_port=uas_port,
                rate=rate,
                calls=calls,
                plan=plan,
                name=f"{system}-{transport}-{n:02d}",
            )
            step.total_s = time.monotonic() - t_load
            return step

        # (a) double the rate up to the first step that is not sustained, then bisect.
        best: Step | None = None
        bad: Step | None = None
        rate = plan.start_rate
        while rate <= plan.max_rate:
            step = load(rate, max(rate, int(rate * plan.step_seconds)))
            row.steps.append({"kind": "search", **asdict(step)})
            _progress(system, transport, "search", step)
            if not step.sustained:
                bad = step
                break
            best = step
            time.sleep(plan.settle_seconds)  # let the SUT's finished transactions expire
            rate *= 2
        for _ in range(plan.bisect if bad is not None and best is not None else 0):
            assert bad is not None and best is not None
            rate = _round_rate((best.rate + bad.rate) / 2)
            if rate in (best.rate, bad.rate):
                break
            step = load(rate, max(rate, int(rate * plan.step_seconds)))
            row.steps.append({"kind": "bisect", **asdict(step)})
            _progress(system, transport, "bisect", step)
            if step.sustained:
                best = step
            else:
                bad = step
            time.sleep(plan.settle_seconds)
        if bad is None:
            row.limited_by = f"none up to {plan.max_rate} cps (the search's top)"
        elif bad.failed_ratio >= MAX_FAILED_RATIO:
            row.limited_by = f"{bad.failed_ratio:.1%} failed at {bad.rate} cps"
        else:
            row.limited_by = f"calls {bad.lag_s:.1f} s late at {bad.rate} cps"
        if best is not None:
            row.max_cps = best.rate
            # The busy part of the step: without the UAC's 1 s timewait after the last call.
            busy = max(best.seconds - 1.0, best.calls / best.rate, 1e-3)
            row.sut_cpu_at_max = best.sut_cpu_s / busy
            row.load_cpu_at_max = best.load_cpu_s / busy
            row.other_cpu_at_max = best.other_cpu_s / busy
            row.invite_ms_at_max = best.invite_ms
            if row.load_cpu_at_max > 0.85 and row.sut_cpu_at_max < 0.85:
                row.limited_by += "; load generator near one core: a lower bound"
        else:
            row.limited_by = f"no step sustained ({row.limited_by})"


def _round_rate(rate: float) -> int:
    """Rates of the bisection, rounded to 2 significant digits (1350, 2700, 240)."""
    digits = max(0, len(str(int(rate))) - 2)
    return int(round(rate / 10**digits) * 10**digits)


def _progress(system: str, transport: str, kind: str, step: Step) -> None:
    print(
        f"  {system:8} {transport:3} {kind:6} {step.rate:5d} cps x{step.calls:6d}: "
        f"ok {step.successful} failed {step.calls - step.successful} "
        f"({step.failed_ratio:.2%}){' stopped' if step.stopped_early else ''}, "
        f"late {step.lag_s:.1f} s, INVITE->200 {_fmt(step.invite_ms, '.1f')} ms, "
        f"SUT {step.sut_cpu_s:.2f} cpu-s{_drained(step)}, load {step.load_cpu_s:.2f} cpu-s, "
        f"other on CPU {SUT_CPU} {step.other_cpu_s:.2f} cpu-s, "
        f"{step.seconds:.1f} s ({step.total_s:.1f} s in all) {step.note}",
        file=sys.stderr,
        flush=True,
    )


def _drained(step: Step) -> str:
    if step.sut_cpu_drained_s is None:
        return ""
    return f" ({step.sut_cpu_drained_s:.2f} with the drain)"


def _one_line(text: str) -> str:
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    return lines[0][:300] if lines else "unknown"


# ---------------------------------------------------------------- media (--media)
#
# sipedge relaying media (its relay on, plain RTP on both sides) against Kamailio driving
# rtpengine through its rtpengine module (bench/kamailio/proxy-rtpengine.cfg), the way
# production edges anchor media.  Calls carry RTP: the sipp UAC plays a G.711a pcap (236
# packets of 30 ms, 7.08 s) to the SUT's relay port, the sipp UAS echoes every packet back
# (-rtp_echo), so per call the SUT relays 236 packets each way on each leg: it receives 472
# and sends 472.  At RATE calls/s with a 7.5 s hold, about RATE * 7.6 calls carry media at
# once in the steady state.

PCAP = Path("/usr/share/sip-tester/g711a.pcap")
PCAP_PACKETS = 236  # one way, per call (each 30 ms of PCMA)
RTPENGINE_CFG = REPO / "bench" / "kamailio" / "proxy-rtpengine.cfg"
# rtpengine's own RTP ports: clear of sipedge's test (20000-29999) and dev (30000-39999)
# ranges and of sipp's ports (tests/peers.py hands out 20000-32000).
RTPENGINE_PORTS = (40000, 44999)
# sipedge's relay in the bench: a block of its own above rtpengine's.
SIPEDGE_RELAY_BLOCK = (45000, 60000)


@dataclass(frozen=True)
class MediaPlan:
    """Fixed-rate runs of calls carrying media, and one shorter run checked with tshark."""

    rate: int
    calls: int
    runs: int
    hold_ms: int
    recv_timeout_ms: int
    verify_calls: int


MEDIA_FULL = MediaPlan(
    rate=20, calls=600, runs=3, hold_ms=7500, recv_timeout_ms=5000, verify_calls=60
)
MEDIA_QUICK = MediaPlan(
    rate=10, calls=100, runs=1, hold_ms=7500, recv_timeout_ms=5000, verify_calls=20
)


class RtpengineProc(Proc):
    """rtpengine 10.5 (Debian rtpengine-daemon) in the foreground, ours by PID: no config
    file (``--config-file=none``: /etc/rtpengine/rtpengine.conf is the system service's),
    userspace forwarding only (``--table=-1``: no kernel module), RTP on ``host`` ports
    ``ports``, the ng control protocol on ``host``:``ng_port`` (UDP) and its CLI on
    ``host``:``cli_port`` (TCP: ``list totals`` gives the relayed packets).  Sessions go
    at once when deleted (``--delete-delay=0``) so their ports and totals are final when a
    call ends."""

    def __init__(
        self,
        *,
        workdir: Path,
        host: str = "127.0.0.1",
        ports: tuple[int, int] = RTPENGINE_PORTS,
        name: str = "rtpengine",
        cpu: int | None = None,
    ) -> None:
        exe = find_binary("rtpengine") or "rtpengine"
        self.host = host
        self.ng_port = free_port(host, "udp")
        self.cli_port = free_port(host, "tcp")
        self.ports = ports
        argv = [
            exe,
            "--config-file=none",
            "--foreground",
            "--log-stderr",
            "--log-level=5",
            "--table=-1",
            f"--interface={host}",
            f"--listen-ng={host}:{self.ng_port}",
            f"--listen-cli={host}:{self.cli_port}",
            f"--port-min={ports[0]}",
            f"--port-max={ports[1]}",
            "--delete-delay=0",
            "--timeout=60",
        ]
        super().__init__(argv, workdir=workdir, name=name, cpu=cpu)

    @property
    def ng_socket(self) -> str:
        """The rtpengine module's rtpengine_sock for this daemon."""
        return f"udp:{self.host}:{self.ng_port}"

    def ng(self, command: bytes, timeout: float = 1.0) -> bytes:
        """One ng request (bencoded dictionary); the reply's bencoded part."""
        import secrets
        import socket

        cookie = secrets.token_hex(6).encode()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            sock.sendto(cookie + b" " + command, (self.host, self.ng_port))
            while True:
                data, _ = sock.recvfrom(65536)
                if data.startswith(cookie + b" "):
                    return data[len(cookie) + 1 :]

    def wait_ready(self, timeout: float = 10.0) -> RtpengineProc:
        deadline = time.monotonic() + timeout
        while True:
            if self.poll() is not None:
                raise NotRunnable(
                    f"rtpengine exited with status {self.returncode}\n{self.log_tail()}"
                )
            with contextlib.suppress(OSError):
                if self.ng(b"d7:command4:pinge", timeout=0.3) == b"d6:result4:ponge":
                    wait_for_port(self.host, self.cli_port, "tcp", 5, proc=self)
                    return self
            if time.monotonic() > deadline:
                raise NotRunnable(
                    f"rtpengine did not answer ng ping in {timeout}s\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def totals(self) -> dict[str, str]:
        """``list totals`` from the CLI: label -> value (the first of each label)."""
        import socket

        data = b""
        with socket.create_connection((self.host, self.cli_port), timeout=5) as sock:
            sock.sendall(b"list totals\n")
            while chunk := sock.recv(65536):
                data += chunk
        found: dict[str, str] = {}
        for line in data.decode(errors="replace").splitlines():
            if ":" in line:
                label, value = line.split(":", 1)
                found.setdefault(label.strip(), value.strip())
        return found

    def relayed_packets(self) -> int:
        """Packets relayed by sessions that have ended (userspace and kernel: all of them
        are userspace here)."""
        return int(self.totals()["Total relayed packets"])


@dataclass
class MediaSut:
    """The system under test of a media row: its processes and how to count its work."""

    system: str
    addresses: ProxyAddresses
    pids: dict[str, int]  # part -> PID ("kamailio" counts its forked children too)
    relay_range: tuple[int, int]
    edge: SipedgeProc | None = None
    rtpengine: RtpengineProc | None = None
    _ended_seen: int = 0

    def cpu(self) -> dict[str, float]:
        return {
            part: cpu_seconds(pid, tree=(part != "rtpengine")) for part, pid in self.pids.items()
        }

    def relayed(self) -> dict[str, int]:
        """The SUT's own count of relayed packets so far (ended calls).  sipedge: the
        ``media_ended`` log lines (packets in, out and dropped per call; the relay's counters
        are not exported otherwise); rtpengine: its CLI totals."""
        if self.rtpengine is not None:
            packets = self.rtpengine.relayed_packets()
            return {"packets": packets, "packets_in": -1, "dropped": 0, "calls": 0}
        assert self.edge is not None
        packets_in = packets_out = dropped = calls = 0
        for line in self.edge.read_stdout().splitlines():
            if '"media_ended"' not in line:
                continue
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if record.get("event") == "media_ended":
                    calls += 1
                    packets_in += int(record.get("packets_in", 0))
                    packets_out += int(record.get("packets_out", 0))
                    dropped += int(record.get("dropped", 0))
        return {
            "packets": packets_out,
            "packets_in": packets_in,
            "dropped": dropped,
            "calls": calls,
        }


def start_media_sut(
    system: str, workdir: Path, certs: TestCerts, uas_uri: str, procs: ProcGroup
) -> MediaSut:
    """The SUT with media: Kamailio (either memory manager) + rtpengine, or sipedge
    with its relay; all on CPU 0."""
    if not PCAP.is_file():
        raise NotRunnable(f"{PCAP} missing (Debian package sip-tester)")
    if system in KAMAILIO_SYSTEMS:
        if find_binary("kamailio") is None:
            raise NotRunnable(missing_binary_message("kamailio", "kamailio"))
        if find_binary("rtpengine") is None:
            raise NotRunnable(missing_binary_message("rtpengine", "rtpengine-daemon"))
        rtpe = RtpengineProc(workdir=workdir, host=CALLER, cpu=SUT_CPU)
        procs.add(rtpe).start()
        rtpe.wait_ready()
        kam = KamailioProc(
            workdir=workdir,
            certs=certs,
            targets=[uas_uri],
            tls=Path("/usr/lib/x86_64-linux-gnu/kamailio/modules/tls.so").exists(),
            cpu=SUT_CPU,
            fr_timer_ms=5000,
            shm_mb=2048,
            config=RTPENGINE_CFG,
        )
        kam.argv += ["-A", f'RTPENGINE_SOCK="{rtpe.ng_socket}"', *KAMAILIO_SYSTEMS[system]]
        procs.add(kam).start()
        kam.wait_ready()
        return MediaSut(
            system=media_label(system),
            addresses=kam.addresses,
            pids={"kamailio": kam.pid, "rtpengine": rtpe.pid},
            relay_range=RTPENGINE_PORTS,
            rtpengine=rtpe,
        )
    if system == "sipedge":
        if sipedge_binary() is None:
            raise NotRunnable("no sipedge console script (make install)")
        low, high = free_udp_block(CALLER, 4000, *SIPEDGE_RELAY_BLOCK)
        edge = SipedgeProc(
            workdir=workdir,
            certs=certs,
            upstream={
                "echo": False,
                "default": "pbx",
                "sets": [
                    {
                        "name": "pbx",
                        "algorithm": "round-robin",
                        "probe_interval": 0,
                        "media": "rtp",
                        "targets": [{"uri": uas_uri}],
                    }
                ],
            },
            trunks=[{"name": "loopback", "allow": ["127.0.0.1/32"], "media": "rtp"}],
            # The relay on, plain RTP both sides: RTP -> RTP relaying, like rtpengine's.
            # Ports free again after 1 s (rtpengine runs with --delete-delay=0).
            extra={
                "media": {
                    "enabled": True,
                    "port_range": f"{low}-{high}",
                    "quarantine": 1.0,
                    "timeout": 60.0,
                }
            },
            cpu=SUT_CPU,
        )
        procs.add(edge).start()
        edge.wait_ready()
        return MediaSut(
            system="sipedge relay",
            addresses=edge.addresses,
            pids={"sipedge": edge.pid},
            relay_range=(low, high),
            edge=edge,
        )
    raise ValueError(system)


@dataclass
class MediaStep:
    """One fixed-rate run of calls with media."""

    kind: str  # "cpu" or "verify" (with tshark on lo)
    rate: int
    calls: int
    successful: int
    failed: int
    uas_failed: int
    seconds: float
    sut_cpu_s: float
    sut_cpu_parts: dict[str, float]
    load_cpu_s: float
    softirq_cpu_s: float  # CPU 0's softirqs: mostly loopback delivery of what the SUT sends
    other_cpu_s: float  # CPU 0 busy with neither the SUT nor softirqs: other people's work
    relayed_packets: int  # the SUT's own count: packets it sent on (both legs, both ways)
    received_packets: int | None  # sipedge: packets in (rtpengine counts relayed only)
    dropped_packets: int
    # Datagrams the kernel dropped at full receive buffers: at the SUT's relay sockets, at
    # the UAS's echo socket, at the UAC's media socket (the echoes come back to a socket
    # sipp does not read while playing a pcap: expected, and after the relay's work).
    sut_counted_calls: int  # sipedge: media_ended lines in the run (0 for rtpengine)
    socket_drops: dict[str, int] = field(default_factory=dict)
    hops: dict[str, int] = field(default_factory=dict)  # tshark counts ("verify" runs)
    stray_packets: int = 0
    returncode: int | None = None
    note: str = ""

    @property
    def expected_packets(self) -> int:
        """Relayed packets if every successful call's pcap went out and came back."""
        return self.successful * PCAP_PACKETS * 2


def run_media_load(
    *,
    workdir: Path,
    procs: ProcGroup,
    sut: MediaSut,
    target: tuple[str, int],
    transport: Transport,
    certs: TestCerts,
    uas_port: int,
    rate: int,
    calls: int,
    plan: MediaPlan,
    name: str,
    kind: str,
) -> MediaStep:
    """One bounded run of ``calls`` calls with media at ``rate``; SUT CPU and its packet
    count over the run; with ``kind == "verify"``, tshark counts the RTP on lo per hop."""
    step_dir = workdir / name
    uas = sipp_uas(
        "media_uas_echo",
        workdir=step_dir,
        name="uas",
        local_ip=UPSTREAM,
        port=uas_port,
        calls=calls * 2,
        timeout=calls / rate + plan.hold_ms / 1000 + 60,
        cpu=LOAD_CPU,
        extra=("-rtp_echo", *SIPP_LENIENT, *SIPP_BUFFERS),
    )
    procs.add(uas).start()
    uas.wait_ready()
    remote = target
    tunnel: Stunnel | None = None
    if transport == "tls":
        tunnel = Stunnel.client(
            workdir=step_dir,
            accept=(CALLER, free_port(CALLER, "tcp")),
            connect=target,
            ca=certs.ca,
            debug=3,
            cpu=LOAD_CPU,
        )
        procs.add(tunnel).start()
        tunnel.wait_ready()
        remote = tunnel.accept
    uac = sipp_uac(
        "media_uac_pcap",
        remote,
        workdir=step_dir,
        name="uac",
        transport="udp" if transport == "udp" else "tcp",
        local_ip=CALLER,
        ruri=sip_uri(target[0], target[1], transport, "1000"),
        calls=calls,
        rate=rate,
        limit=max(200, int(rate * (plan.hold_ms / 1000 + 5) * 2)),
        hold_ms=plan.hold_ms,
        timeout=calls / rate + plan.hold_ms / 1000 + 40,
        recv_timeout_ms=plan.recv_timeout_ms,
        keys={"pcap": str(PCAP)},
        cpu=LOAD_CPU,
        extra=SIPP_LENIENT + SIPP_BUFFERS,
    )
    capture: Capture | None = None
    caller_media = (CALLER, uac.media_port)
    callee_media = (UPSTREAM, uas.media_port)
    if kind == "verify":
        capture = Capture(
            workdir=step_dir,
            capture_filter=(
                f"udp and ((host {CALLER} and port {uac.media_port}) or "
                f"(host {UPSTREAM} and port {uas.media_port}))"
            ),
            limit_s=int(calls / rate + plan.hold_ms / 1000 + 60),
        )
        capture.cpu = LOAD_CPU
        procs.add(capture).start()
        capture.wait_ready()
    relayed0 = sut.relayed()
    cpu0 = sut.cpu()
    busy0 = cpu_busy_seconds(SUT_CPU)
    softirq0 = cpu_softirq_seconds(SUT_CPU)
    drops = SocketDrops(
        {
            "SUT relay": (CALLER, *sut.relay_range),
            "UAS echo": (UPSTREAM, uas.media_port, uas.media_port),
            "UAC media": (CALLER, uac.media_port, uac.media_port),
        }
    )
    drops.sample(baseline=True)
    t0 = time.monotonic()
    procs.add(uac).start()
    uac_pid = uac.pid
    load0 = cpu_seconds(uas.pid, tree=False)
    load_uac = 0.0
    deadline = t0 + calls / rate + plan.hold_ms / 1000 + plan.recv_timeout_ms / 1000 + 45
    next_sample = t0
    while uac.poll() is None and time.monotonic() < deadline:
        # The UAC's CPU with its pcap-playing threads, sampled while it lives.
        load_uac = cpu_seconds(uac_pid, tree=False)
        if time.monotonic() >= next_sample:
            next_sample += 0.5
            drops.sample()
        time.sleep(0.1)
    drops.sample()
    elapsed = time.monotonic() - t0
    cpu1 = sut.cpu()
    busy1 = cpu_busy_seconds(SUT_CPU)
    softirq = cpu_softirq_seconds(SUT_CPU) - softirq0
    uac.stop()
    result = uac.result()
    load_uas = cpu_seconds(uas.pid, tree=False) - load0
    uas_result = uas.stop_and_result()
    if tunnel is not None:
        tunnel.stop()
    # The last BYEs have been answered: the SUT's sessions are gone (rtpengine adds a
    # session's packets to its totals when it deletes it, sipedge logs media_ended).
    time.sleep(0.5)
    relayed1 = sut.relayed()
    hops: dict[str, int] = {}
    stray = 0
    if capture is not None:
        capture.stop()
        hops, stray = _media_hops(capture, caller_media, callee_media, sut.relay_range)
    parts = {k: cpu1[k] - cpu0[k] for k in cpu1}
    sut_cpu = sum(parts.values())
    note = ""
    if result.failed or result.successful < calls:
        lines = [ln for ln in result.errors.splitlines() if ln.strip()]
        first = next((ln for ln in lines if "Aborting" in ln), lines[0] if lines else "")
        note = first[-200:]
    return MediaStep(
        kind=kind,
        rate=rate,
        calls=calls,
        successful=result.successful,
        failed=result.failed,
        uas_failed=uas_result.failed,
        seconds=elapsed,
        sut_cpu_s=sut_cpu,
        sut_cpu_parts=parts,
        load_cpu_s=load_uac + load_uas,
        softirq_cpu_s=softirq,
        other_cpu_s=max(0.0, (busy1 - busy0) - sut_cpu - softirq),
        relayed_packets=relayed1["packets"] - relayed0["packets"],
        received_packets=None
        if relayed1["packets_in"] < 0
        else relayed1["packets_in"] - relayed0["packets_in"],
        socket_drops=drops.totals(),
        dropped_packets=relayed1["dropped"] - relayed0["dropped"],
        sut_counted_calls=relayed1["calls"] - relayed0["calls"],
        hops=hops,
        stray_packets=stray,
        returncode=result.returncode,
        note=note,
    )


def _media_hops(
    capture: Capture,
    caller_media: tuple[str, int],
    callee_media: tuple[str, int],
    relay_range: tuple[int, int],
) -> tuple[dict[str, int], int]:
    """Packets per hop in the capture: caller -> relay, relay -> callee, the callee's echo ->
    relay, relay -> caller; ``stray``: packets to or from the sipps' media ports whose other
    end is not a relay port of the SUT."""
    argv = [capture.binary, "-n", "-r", str(capture.path), "-Y", "udp", "-T", "fields"]
    argv += ["-E", "separator=|"]
    for f in ("ip.src", "udp.srcport", "ip.dst", "udp.dstport"):
        argv += ["-e", f]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    hops = {"caller->relay": 0, "relay->callee": 0, "callee echo->relay": 0, "relay->caller": 0}
    stray = 0
    low, high = relay_range

    def relay(ip: str, port: int) -> bool:
        return ip == CALLER and low <= port <= high

    for line in out.stdout.splitlines():
        parts = line.split("|")
        if len(parts) != 4 or not parts[1] or not parts[3]:
            continue
        src, dst = (parts[0], int(parts[1])), (parts[2], int(parts[3]))
        if src == caller_media and relay(*dst):
            hops["caller->relay"] += 1
        elif dst == callee_media and relay(*src):
            hops["relay->callee"] += 1
        elif src == callee_media and relay(*dst):
            hops["callee echo->relay"] += 1
        elif dst == caller_media and relay(*src):
            hops["relay->caller"] += 1
        else:
            stray += 1
    return hops, stray


@dataclass
class MediaRow:
    system: str
    transport: str
    runnable: bool = True
    reason: str = ""
    cpu_per_1000: float | None = None  # median over the "cpu" runs
    cpu_per_1000_runs: list[float] = field(default_factory=list)
    cpu_parts_per_1000: dict[str, float] = field(default_factory=dict)  # of the median run
    us_per_packet: float | None = None  # SUT CPU (signalling included) / relayed packets
    packets_per_call: float | None = None  # the SUT's own count
    sut_cpu_share: float | None = None  # of one core, the median run
    load_cpu_share: float | None = None
    softirq_share: float | None = None
    other_cpu_share: float | None = None
    calls: int = 0
    failed: int = 0
    dropped: int = 0  # by the relay itself (sipedge's media_ended; rtpengine: not counted)
    kernel_drops: int = 0  # at the SUT's relay sockets, full receive buffers
    verified: str = ""
    media_ok: bool = False
    steps: list[dict[str, Any]] = field(default_factory=list)


def media_label(system: str) -> str:
    """A --media system's name in the report: the Kamailios with rtpengine added."""
    return f"{system}+rtpengine" if system in KAMAILIO_SYSTEMS else "sipedge relay"


def measure_media_row(
    system: str, transport: Transport, plan: MediaPlan, workdir: Path, certs: TestCerts
) -> MediaRow:
    row = MediaRow(media_label(system), transport)
    for binary, package in (("sipp", "sip-tester"), ("tshark", "tshark")):
        if find_binary(binary) is None:
            row.runnable, row.reason = False, missing_binary_message(binary, package)
            return row
    if transport == "tls" and find_binary("stunnel4") is None and find_binary("stunnel") is None:
        row.runnable, row.reason = False, missing_binary_message("stunnel4", "stunnel4")
        return row
    with ProcGroup() as procs:
        uas_port = free_port(UPSTREAM, "udp")
        try:
            sut = start_media_sut(system, workdir, certs, sip_uri(UPSTREAM, uas_port, "udp"), procs)
            target = sut.addresses.of(transport)
        except (NotRunnable, PeerError) as e:
            row.runnable, row.reason = False, _one_line(str(e))
            return row
        n = 0

        def load(calls: int, kind: str) -> MediaStep:
            nonlocal n
            n += 1
            step = run_media_load(
                workdir=workdir,
                procs=procs,
                sut=sut,
                target=target,
                transport=transport,
                certs=certs,
                uas_port=uas_port,
                rate=plan.rate,
                calls=calls,
                plan=plan,
                name=f"media-{system}-{transport}-{n:02d}",
                kind=kind,
            )
            row.steps.append(asdict(step))
            _media_progress(row.system, transport, step)
            return step

        # First a short run with tshark on lo: does the media flow, all four hops?
        verify = load(plan.verify_calls, "verify")
        expected = verify.successful * PCAP_PACKETS
        low_hops = {h: c for h, c in verify.hops.items() if c < 0.95 * expected}
        row.media_ok = expected > 0 and not low_hops and verify.stray_packets == 0
        row.verified = (
            f"{'yes' if row.media_ok else 'NO'}: {verify.successful} calls, tshark per hop "
            + "/".join(str(c) for c in verify.hops.values())
            + f" of {expected} expected"
            + (f", {verify.stray_packets} stray" if verify.stray_packets else "")
            + f"; SUT counted {verify.relayed_packets} of {verify.expected_packets}"
        )
        # Then the CPU runs, without the capture.
        runs = [load(plan.calls, "cpu") for _ in range(plan.runs)]
        for st in runs:
            row.cpu_per_1000_runs.append(st.sut_cpu_s / st.calls * 1000)
            row.calls += st.calls
            row.failed += st.calls - st.successful
            row.dropped += st.dropped_packets
            row.kernel_drops += st.socket_drops.get("SUT relay", 0)
        row.cpu_per_1000 = statistics.median(row.cpu_per_1000_runs)
        median_run = sorted(runs, key=lambda st: st.sut_cpu_s / st.calls)[len(runs) // 2]
        row.cpu_parts_per_1000 = {
            k: v / median_run.calls * 1000 for k, v in median_run.sut_cpu_parts.items()
        }
        if median_run.relayed_packets > 0:
            row.us_per_packet = median_run.sut_cpu_s / median_run.relayed_packets * 1e6
        if median_run.successful:
            row.packets_per_call = median_run.relayed_packets / median_run.successful
        busy = max(median_run.seconds - 1.0, 1e-3)
        row.sut_cpu_share = median_run.sut_cpu_s / busy
        row.load_cpu_share = median_run.load_cpu_s / busy
        row.softirq_share = median_run.softirq_cpu_s / busy
        row.other_cpu_share = median_run.other_cpu_s / busy
    return row


def _media_progress(label: str, transport: str, step: MediaStep) -> None:
    hops = ""
    if step.hops:
        hops = " tshark " + " ".join(f"{k} {v}" for k, v in step.hops.items())
        hops += f" stray {step.stray_packets}"
    parts = " ".join(f"{k} {v:.2f}" for k, v in step.sut_cpu_parts.items())
    print(
        f"  {label:18} {transport:3} {step.kind:6} {step.rate:3d} cps x{step.calls:5d}: "
        f"ok {step.successful} failed {step.calls - step.successful}, "
        f"SUT {step.sut_cpu_s:.2f} cpu-s ({parts}), load {step.load_cpu_s:.2f} cpu-s, "
        f"softirq on CPU {SUT_CPU} {step.softirq_cpu_s:.2f} s, "
        f"other on CPU {SUT_CPU} {step.other_cpu_s:.2f} cpu-s, relayed {step.relayed_packets} "
        f"of {step.expected_packets} (in {_fmt(step.received_packets, 'd')}, dropped "
        f"{step.dropped_packets}; kernel drops "
        + ", ".join(f"{k} {v}" for k, v in step.socket_drops.items())
        + f"){hops}, "
        f"{step.seconds:.1f} s {step.note}",
        file=sys.stderr,
        flush=True,
    )


def render_media(
    rows: list[MediaRow], plan: MediaPlan, quick: bool, versions: dict[str, str], load: str
) -> str:
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    concurrent = plan.rate * (plan.hold_ms / 1000 + 0.1)
    lines = [
        f"# Proxy benchmark with media, {now}{' (--quick)' if quick else ''}",
        "",
        f"SUT pinned to CPU {SUT_CPU} (Kamailio and rtpengine both); sipp UAC, sipp UAS, "
        f"stunnel and tshark pinned to CPU {LOAD_CPU}. Calls INVITE/100/180/200/ACK/BYE/200 "
        f"with SDP, at {plan.rate} cps with a {plan.hold_ms} ms hold: about "
        f"{concurrent:.0f} calls carrying media at once. Media: the UAC plays "
        f"{PCAP.name} (G.711a, {PCAP_PACKETS} packets of 30 ms) to the SUT's relay port, the "
        "UAS echoes each packet (sipp -rtp_echo): per call the SUT relays "
        f"{2 * PCAP_PACKETS} packets ({PCAP_PACKETS} each way), receiving and sending each "
        "once. kamailio+rtpengine: bench/kamailio/proxy-rtpengine.cfg (rtpengine_offer / "
        "_answer / _delete, replace-origin replace-session-connection) and rtpengine "
        "(userspace only, --table=-1); kamailio-tlsf+rtpengine: the same with both of "
        "Kamailio's memory pools on TLSF (-x tlsf -X tlsf); sipedge relay: [media] enabled, "
        "plain RTP on both "
        "sides. "
        f"CPU: SUT utime+stime (Kamailio's processes + rtpengine; sipedge's one process) per "
        f"1000 calls, {plan.calls} calls per run, median of {plan.runs}. "
        "us/packet: the same CPU (signalling included) over the packets the SUT says it "
        "relayed (rtpengine: CLI 'list totals'; sipedge: its media_ended log lines). "
        f"Media verified: a separate run of {plan.verify_calls} calls captured on lo with "
        "tshark, packets per hop caller->relay / relay->callee / echo->relay / "
        "relay->caller against calls x 236. Dropped packets: by the relay itself (sipedge "
        "counts them; rtpengine's are not read) + by the kernel at the SUT's relay sockets "
        "(full receive buffers, /proc/net/udp), over the CPU runs.",
        "",
        f"| system | transport | CPU s / 1000 calls with media @ {plan.rate} cps | "
        "of which | us CPU / relayed packet | relayed packets / call (SUT's count) | "
        "failed calls | dropped packets (relay + kernel) | SUT CPU | load CPU | "
        f"softirq on CPU {SUT_CPU} | "
        f"other work on CPU {SUT_CPU} | media verified |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        if not r.runnable:
            lines.append(
                f"| {r.system} | {r.transport} | not runnable ({r.reason}) "
                "| - | - | - | - | - | - | - | - | - | - |"
            )
            continue
        parts = ", ".join(f"{k} {v:.2f}" for k, v in r.cpu_parts_per_1000.items())
        lines.append(
            f"| {r.system} | {r.transport} | {_fmt(r.cpu_per_1000, '.2f')} | {parts} | "
            f"{_fmt(r.us_per_packet, '.1f')} | {_fmt(r.packets_per_call, '.0f')} | "
            f"{r.failed} of {r.calls} | {r.dropped} + {r.kernel_drops} | "
            f"{_fmt(r.sut_cpu_share, '.0%')} | {_fmt(r.load_cpu_share, '.0%')} | "
            f"{_fmt(r.softirq_share, '.0%')} | "
            f"{_fmt(r.other_cpu_share, '.0%')} | {r.verified} |"
        )
    by = {(r.system, r.transport): r for r in rows if r.runnable}
    for kamailio in KAMAILIO_SYSTEMS:
        for transport in ("udp", "tls"):
            s = by.get(("sipedge relay", transport))
            k = by.get((media_label(kamailio), transport))
            if s is not None and k is not None:
                lines.append(
                    f"| sipedge/({kamailio}+rtpengine) | {transport} | "
                    f"{_ratio(s.cpu_per_1000, k.cpu_per_1000)} | - | "
                    f"{_ratio(s.us_per_packet, k.us_per_packet)} | - | - | - | - | - | - | - | - |"
                )
    lines += [
        "",
        f"Machine load before the run (uptime): {load}",
        "",
        "Versions: " + "; ".join(f"{k} {v}" for k, v in versions.items()),
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- report


def _interpreter() -> str:
    """The interpreter sipedge runs on (this one: the SUT is the same venv's console
    script), and whether libpython is linked in or a shared library: a build without
    PGO and LTO (pyenv's default) costs sipedge about a quarter more CPU per call."""
    exe = os.path.realpath(sys.executable)
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return f"{sys.version.split()[0]} ({exe})"
    linked = "shared libpython" if "libpython" in maps else "libpython linked in"
    return f"{sys.version.split()[0]} ({exe}, {linked})"


def _versions() -> dict[str, str]:
    def first_line(argv: list[str], prefix: str = "") -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return "not installed"
        text = (out.stdout + out.stderr).strip()
        for line in text.splitlines():
            if line.strip() and line.strip().startswith(prefix):
                return line.strip()
        return "?"

    versions = {
        "kamailio": first_line(["kamailio", "-v"]),
        "sipp": first_line(["sipp", "-v"]),
        "stunnel": first_line([find_binary("stunnel4") or "stunnel", "-version"], "stunnel "),
        "rtpengine": first_line(["rtpengine", "--version"]),
        "python": _interpreter(),
        "kernel": platform.release(),
    }
    compiled, why = _compiled.status()  # what the sipedge processes this run starts use
    pgo = _compiled.profile()
    built = f"compiled (mypyc, profile-guided: {pgo})" if pgo else "compiled (mypyc, no profile)"
    versions["sipedge core"] = built if compiled else f"plain Python: {why}"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                versions["cpu"] = line.split(":", 1)[1].strip()
                break
    return versions


def _fmt(value: float | int | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _ratio(a: float | int | None, b: float | int | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def render(rows: list[Row], plan: Plan, quick: bool, versions: dict[str, str]) -> str:
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [
        f"# Proxy benchmark, {now}{' (--quick)' if quick else ''}",
        "",
        f"SUT pinned to CPU {SUT_CPU}; sipp UAC, sipp UAS and stunnel pinned to CPU {LOAD_CPU}. "
        "Calls INVITE/100/180/200/ACK/BYE/200 with SDP and no RTP (media passthrough), "
        f"hold {plan.hold_ms} ms. Max rate: the highest rate with < 0.1% failed calls and "
        "the calls on schedule (the last one ending < max(1.5 s, 25% of the step) late), "
        f"found by doubling from {plan.start_rate} cps (up to "
        f"{plan.max_rate}) and {plan.bisect} bisection steps, {plan.step_seconds:g} s of "
        "calls per step. "
        "SUT/load CPU at max: CPU seconds over the busy part of the best step (one core = "
        "100%). "
        f"CPU: SUT utime+stime per 1000 calls at {plan.fixed_rate} cps, "
        f"{plan.fixed_calls} calls, median of {plan.fixed_runs}"
        + "".join(f"; at {rate} cps, {calls} calls" for rate, calls in plan.extra_rates)
        + ". The systems run at once and take turns run by run; a run's CPU counts until "
        f"{plan.drain_s:g} s after its last call (the transactions' timers run out). "
        "udp: UDP on both legs; tls: caller -> one TLS connection (stunnel) -> SUT -> UDP "
        "upstream.",
        "",
        "| system | transport | max cps (<0.1% failed) | CPU s / 1000 calls "
        f"@ {plan.fixed_rate} cps | "
        + "".join(f"CPU s / 1000 calls @ {rate} cps | " for rate, _ in plan.extra_rates)
        + "SUT CPU at max | load CPU at max | other work on CPU "
        f"{SUT_CPU} at max | INVITE->200 ms at max | limited by |",
        "| --- | --- | ---: | ---: | "
        + "---: | " * len(plan.extra_rates)
        + "---: | ---: | ---: | ---: | --- |",
    ]
    extra = [str(rate) for rate, _ in plan.extra_rates]
    dashes = "- | " * len(extra)
    for r in rows:
        if not r.runnable:
            lines.append(
                f"| {r.system} | {r.transport} | not runnable ({r.reason}) "
                f"| - | {dashes}- | - | - | - | - |"
            )
            continue
        cpu = _fmt(r.cpu_per_1000, ".3f")
        if r.fixed_failed:
            cpu += f" ({r.fixed_failed} failed)"
        at = "".join(f"{_fmt(r.cpu_per_1000_at.get(rate), '.3f')} | " for rate in extra)
        lines.append(
            f"| {r.system} | {r.transport} | {_fmt(r.max_cps, 'd')} | {cpu} | {at}"
            f"{_fmt(r.sut_cpu_at_max, '.0%')} | {_fmt(r.load_cpu_at_max, '.0%')} | "
            f"{_fmt(r.other_cpu_at_max, '.0%')} | {_fmt(r.invite_ms_at_max, '.1f')} | "
            f"{r.limited_by} |"
        )
    by = {(r.system, r.transport): r for r in rows if r.runnable}
    turns: list[str] = []
    for reference in KAMAILIO_SYSTEMS:
        label = "sipedge/" + reference.replace("kamailio", "Kamailio")
        for transport in ("udp", "tls"):
            s, k = by.get(("sipedge", transport)), by.get((reference, transport))
            if s is None or k is None:
                continue
            at = "".join(
                f"{_ratio(s.cpu_per_1000_at.get(rate), k.cpu_per_1000_at.get(rate))} | "
                for rate in extra
            )
            lines.append(
                f"| {label} | {transport} | {_ratio(s.max_cps, k.max_cps)} | "
                f"{_ratio(s.cpu_per_1000, k.cpu_per_1000)} | {at}- | - | - | - | - |"
            )
            runs = "; ".join(
                _ratio(a, b) for a, b in zip(s.cpu_per_1000_runs, k.cpu_per_1000_runs, strict=False)
            )
            if runs:
                turns.append(f"{label} {transport} {runs}")
    if turns:
        lines += [
            "",
            f"CPU at {plan.fixed_rate} cps, sipedge against each reference run by run (runs "
            "taken in turns): " + "; ".join(turns) + ".",
        ]
    steps = [st for r in rows for st in r.steps]
    wall = sum(st["seconds"] for st in steps)
    if wall > 0:
        other = sum(st["other_cpu_s"] for st in steps) / wall
        lines += [
            "",
            f"Other work on CPU {SUT_CPU} (not the SUT) during the load runs: {other:.0%} of "
            "the core on average; numbers taken while it is high are pessimistic and noisy.",
        ]
    lines += ["", "Versions: " + "; ".join(f"{k} {v}" for k, v in versions.items()), ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (under a minute)")
    parser.add_argument(
        "--systems",
        default=None,
        help="default kamailio,kamailio-tlsf,kamailio-tlsf-calls,kamailio-tlsf-edge,sipedge "
        "(with --media: kamailio,kamailio-tlsf,sipedge)",
    )
    parser.add_argument("--transports", default="udp,tls", help="default udp,tls")
    parser.add_argument(
        "--media",
        action="store_true",
        help="calls with RTP: sipedge's relay against Kamailio + rtpengine",
    )
    parser.add_argument("--media-rate", type=int, help="with --media: calls per second")
    parser.add_argument("--media-calls", type=int, help="with --media: calls per CPU run")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for the report")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    media_plan = MEDIA_QUICK if args.quick else MEDIA_FULL
    if args.media_rate:
        media_plan = dataclasses.replace(media_plan, rate=args.media_rate)
    if args.media_calls:
        media_plan = dataclasses.replace(media_plan, calls=args.media_calls)
    if len(os.sched_getaffinity(0)) < 2 or (os.cpu_count() or 1) < 2:
        print("bench_proxy: needs two CPUs (SUT on 0, load on 1)", file=sys.stderr)
        return 2
    # With media, Kamailio drives rtpengine (proxy-rtpengine.cfg): the call-state
    # variant is a passthrough reference only.
    known = [k for k in KAMAILIO_SYSTEMS if not (args.media and k in PASSTHROUGH_ONLY)]
    known.append("sipedge")
    systems = [s.strip() for s in (args.systems or ",".join(known)).split(",") if s.strip()]
    if not set(systems) <= set(known):
        parser.error(f"--systems: one of {', '.join(sorted(known))}")
    if args.media:
        # This runner (capture parsing, /proc sampling) keeps off the SUT's CPU too.
        os.sched_setaffinity(0, {LOAD_CPU})
    transports: list[Transport] = []
    for t in args.transports.split(","):
        if t.strip() not in ("udp", "tls"):
            parser.error(f"unknown transport {t!r}")
        transports.append("udp" if t.strip() == "udp" else "tls")
    scratch = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    started = time.monotonic()
    load = _uptime()
    rows: list[Row] = []
    media_rows: list[MediaRow] = []
    try:
        certs = make_test_certs(scratch / "certs")
        if args.media:
            for system in systems:
                for transport in transports:
                    print(f"== {system} over {transport} with media", file=sys.stderr, flush=True)
                    media_rows.append(
                        measure_media_row(system, transport, media_plan, scratch / system, certs)
                    )
        else:
            by_transport: dict[str, dict[str, Row]] = {}
            for transport in transports:
                by_transport[transport] = row_of = {s: Row(s, transport) for s in systems}
                reason = _preflight(transport)
                for row in row_of.values():
                    row.runnable, row.reason = reason is None, reason or ""
                if reason is not None:
                    continue
                print(f"== CPU runs over {transport}", file=sys.stderr, flush=True)
                measure_cpu(row_of, transport, plan, scratch, certs)
                for row in row_of.values():
                    if row.runnable:
                        print(f"== {row.system} over {transport}", file=sys.stderr, flush=True)
                        measure_row(row, transport, plan, scratch / row.system, certs)
            rows = [by_transport[t][s] for s in systems for t in transports]
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(scratch, ignore_errors=True)
        else:
            print(f"scratch kept in {scratch}", file=sys.stderr)
    if args.media:
        report = render_media(media_rows, media_plan, args.quick, _versions(), load)
        data = {"plan": asdict(media_plan), "uptime": load, "rows": [asdict(r) for r in media_rows]}
        name = "proxy-media"
    else:
        report = render(rows, plan, args.quick, _versions())
        data = {"plan": asdict(plan), "rows": [asdict(r) for r in rows]}
        name = "proxy"
    report += f"Run time: {time.monotonic() - started:.0f} s.\n"
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H%M")
    suffix = "-quick" if args.quick else ""
    (args.out / f"{name}-{stamp}{suffix}.md").write_text(report)
    (args.out / f"{name}-{stamp}{suffix}.json").write_text(json.dumps(data, indent=2) + "\n")
    print(f"written: {args.out / f'{name}-{stamp}{suffix}.md'}", file=sys.stderr)
    return 0


def _uptime() -> str:
    """``uptime``'s line: who else loads this machine while the bench runs."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        with contextlib.suppress(OSError):
            return "load average " + Path("/proc/loadavg").read_text().strip()
        return "?"


if __name__ == "__main__":
    sys.exit(main())
