"""Proxy load test: sipedge against Kamailio 5.6, side by side, on this machine.

For each system under test (SUT) and each transport it measures, in one run:

(a) calls per second sustained with fewer than 0.1% failed calls: the call rate steps up a
    fixed ladder (each step a bounded number of calls) until a step fails, meaning more
    than 0.1% of its calls failed or the generator could not keep the rate;
(b) CPU seconds the SUT spends per 1000 calls at a fixed rate (utime+stime of the SUT and
    all its processes from /proc/PID/stat, before and after; median of several runs).

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

    .venv/bin/python bench/bench_proxy.py [--quick] [--systems kamailio,sipedge]
                                          [--transports udp,tls]
"""

from __future__ import annotations

import argparse
import contextlib
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
from typing import Any, Literal

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.peers import (
    KamailioProc,
    NotRunnable,
    PeerError,
    ProcGroup,
    ProxyAddresses,
    SipedgeProc,
    Stunnel,
    TestCerts,
    cpu_seconds,
    find_binary,
    free_port,
    make_test_certs,
    missing_binary_message,
    sip_uri,
    sipedge_binary,
    sipp_uac,
    sipp_uas,
)

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
    fixed_runs=3,
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
    steps: list[dict[str, Any]] = field(default_factory=list)


# ---------------------------------------------------------------- systems under test


def start_sut(
    system: str, workdir: Path, certs: TestCerts, uas_uri: str, procs: ProcGroup
) -> ProxyAddresses:
    """Start the system under test on CPU 0; NotRunnable (with the reason) if it cannot."""
    if system == "kamailio":
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


def _sipp_ms(value: str) -> float | None:
    """sipp's ``HH:MM:SS:uuuuuu`` as milliseconds."""
    try:
        h, m, sec, us = (int(x) for x in value.split(":"))
    except ValueError:
        return None
    return ((h * 60 + m) * 60 + sec) * 1000 + us / 1000


# ---------------------------------------------------------------- one row


def measure_row(
    system: str, transport: Transport, plan: Plan, workdir: Path, certs: TestCerts
) -> Row:
    row = Row(system, transport)
    if transport == "tls" and find_binary("stunnel4") is None and find_binary("stunnel") is None:
        row.runnable, row.reason = False, missing_binary_message("stunnel4", "stunnel4")
        return row
    if find_binary("sipp") is None:
        row.runnable, row.reason = False, missing_binary_message("sipp", "sip-tester")
        return row
    with ProcGroup() as procs:
        uas_port = free_port(UPSTREAM, "udp")
        try:
            addresses = start_sut(system, workdir, certs, sip_uri(UPSTREAM, uas_port, "udp"), procs)
            target = addresses.of(transport)
        except (NotRunnable, PeerError) as e:
            row.runnable, row.reason = False, _one_line(str(e))
            return row
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

        # (b) first, while the SUT is fresh: CPU per 1000 calls at the fixed rate.
        fixed_steps: list[Step] = []
        for _ in range(plan.fixed_runs):
            step = load(plan.fixed_rate, plan.fixed_calls)
            fixed_steps.append(step)
            row.steps.append({"kind": "fixed", **asdict(step)})
            row.fixed_failed += step.calls - step.successful
            row.cpu_per_1000_runs.append(step.sut_cpu_s / step.calls * 1000)
            _progress(system, transport, "fixed", step)
        row.cpu_per_1000 = statistics.median(row.cpu_per_1000_runs)

        # (a) double the rate up to the first step that is not sustained, then bisect.
        best: Step | None = None
        bad: Step | None = None
        rate = plan.start_rate
        last_fixed = fixed_steps[-1] if fixed_steps else None
        if last_fixed is not None and last_fixed.rate == rate and last_fixed.sustained:
            # The fixed-rate run was a (longer) step at the starting rate: no need to redo it.
            best, rate = last_fixed, rate * 2
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
    return row


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
        f"SUT {step.sut_cpu_s:.2f} cpu-s, load {step.load_cpu_s:.2f} cpu-s, "
        f"other on CPU {SUT_CPU} {step.other_cpu_s:.2f} cpu-s, "
        f"{step.seconds:.1f} s ({step.total_s:.1f} s in all) {step.note}",
        file=sys.stderr,
        flush=True,
    )


def _one_line(text: str) -> str:
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    return lines[0][:300] if lines else "unknown"


# ---------------------------------------------------------------- report


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
        "python": sys.version.split()[0],
        "kernel": platform.release(),
    }
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
        f"{plan.fixed_calls} calls, median of {plan.fixed_runs}. "
        "udp: UDP on both legs; tls: caller -> one TLS connection (stunnel) -> SUT -> UDP "
        "upstream.",
        "",
        "| system | transport | max cps (<0.1% failed) | CPU s / 1000 calls "
        f"@ {plan.fixed_rate} cps | SUT CPU at max | load CPU at max | other work on CPU "
        f"{SUT_CPU} at max | INVITE->200 ms at max | limited by |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        if not r.runnable:
            lines.append(
                f"| {r.system} | {r.transport} | not runnable ({r.reason}) "
                "| - | - | - | - | - | - |"
            )
            continue
        cpu = _fmt(r.cpu_per_1000, ".3f")
        if r.fixed_failed:
            cpu += f" ({r.fixed_failed} failed)"
        lines.append(
            f"| {r.system} | {r.transport} | {_fmt(r.max_cps, 'd')} | {cpu} | "
            f"{_fmt(r.sut_cpu_at_max, '.0%')} | {_fmt(r.load_cpu_at_max, '.0%')} | "
            f"{_fmt(r.other_cpu_at_max, '.0%')} | {_fmt(r.invite_ms_at_max, '.1f')} | "
            f"{r.limited_by} |"
        )
    by = {(r.system, r.transport): r for r in rows if r.runnable}
    for transport in ("udp", "tls"):
        s, k = by.get(("sipedge", transport)), by.get(("kamailio", transport))
        if s is not None and k is not None:
            lines.append(
                f"| sipedge/Kamailio | {transport} | {_ratio(s.max_cps, k.max_cps)} | "
                f"{_ratio(s.cpu_per_1000, k.cpu_per_1000)} | - | - | - | - | - |"
            )
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
    parser.add_argument("--systems", default="kamailio,sipedge")
    parser.add_argument("--transports", default="udp,tls")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for the report")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    if len(os.sched_getaffinity(0)) < 2 or (os.cpu_count() or 1) < 2:
        print("bench_proxy: needs two CPUs (SUT on 0, load on 1)", file=sys.stderr)
        return 2
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    transports: list[Transport] = []
    for t in args.transports.split(","):
        if t.strip() not in ("udp", "tls"):
            parser.error(f"unknown transport {t!r}")
        transports.append("udp" if t.strip() == "udp" else "tls")
    scratch = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    started = time.monotonic()
    rows: list[Row] = []
    try:
        certs = make_test_certs(scratch / "certs")
        for system in systems:
            for transport in transports:
                print(f"== {system} over {transport}", file=sys.stderr, flush=True)
                rows.append(measure_row(system, transport, plan, scratch / system, certs))
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(scratch, ignore_errors=True)
        else:
            print(f"scratch kept in {scratch}", file=sys.stderr)
    report = render(rows, plan, args.quick, _versions())
    report += f"Run time: {time.monotonic() - started:.0f} s.\n"
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H%M")
    suffix = "-quick" if args.quick else ""
    (args.out / f"proxy-{stamp}{suffix}.md").write_text(report)
    (args.out / f"proxy-{stamp}{suffix}.json").write_text(
        json.dumps({"plan": asdict(plan), "rows": [asdict(r) for r in rows]}, indent=2) + "\n"
    )
    print(f"written: {args.out / f'proxy-{stamp}{suffix}.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
