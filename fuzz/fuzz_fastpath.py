"""Fuzz run of the relay's C data plane (media.fastpath, issue 7): random and mutated
datagrams into the C loops while Python changes the table under them.

Invariant: whatever arrives and whatever the table does meanwhile, the process does
not crash (under fuzz/asan_run.py: no AddressSanitizer or UBSan report, no leak of the
extension's memory), and the plane's books balance:

- every leg, when removed: ``received == packets_in + sum(drops)`` (each datagram the
  loop decided in C was forwarded or dropped with a reason);
- after ``stop()``: the loops' ``packets`` (datagrams read) equal the legs'
  ``received + to_python`` summed over every leg that ever existed, and every punted
  datagram was drained by Python (``to_python`` summed == datagrams drained);
- ``forward()`` answers a verdict of its own vocabulary, or ``KeyError`` for a leg that
  is gone; after ``close()`` the process has the file descriptors and threads it had
  before the plane, and no SRTP Context or Plane object is left alive (a lost
  reference in the binding; LeakSanitizer cannot see those, CPython's GC lists keep
  them reachable).

What it does, bounded by ``--datagrams`` and ``--seconds`` (whichever ends first), with
a fixed ``--seed``:

- legs in every mode: plain RTP pairs, SRTP in (decrypt), SRTP out (encrypt), SRTP both
  ways, echo legs (plain and SRTP), dtls-srtp (``webrtc``) legs with and without keys,
  rtcp-mux legs and legs with a separate RTCP socket, IPv4 and (if available) IPv6;
- each leg's endpoint is a socket latched as its source and destination; strangers
  (unlatched sources) send too; datagrams: valid RTP/RTCP, SRTP/SRTCP under the leg's
  key (with replays and SSRCs past the context's limit), STUN, DTLS, random bytes,
  oversized ones, empty ones, and mutations of all of them, plus what the plane itself
  forwarded, mutated and sent back in;
- meanwhile: legs removed and added, re-keyed, re-flagged, re-paired (echo, unpaired),
  re-latched to a stranger, the plane's clock moved; punts drained in bursts (some left
  to overflow the ring, some past a leg's punt budget) and fed back through
  ``forward()``, sometimes to a removed leg;
- at the end half the legs are removed and the plane is closed with the rest in it;
  then a second, running plane with legs and keys is dropped without ``close()``.

    python fuzz/fuzz_fastpath.py --datagrams 20000 --seconds 5 --seed 7
    python fuzz/fuzz_fastpath.py --ext build/asan/lib/media/_srtp....so   # fuzz/asan_run.py

Prints one JSON line with what it did; exits 1 if an invariant broke.  Loopback only.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib.util
import json
import os
import random
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SUITES = ("AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32")
VERDICTS = {"forwarded", "send_error"}  # plus the drop reasons, added once loaded
HOSTS: dict[int, tuple[str, str, str]] = {
    socket.AF_INET: ("127.0.0.1", "127.0.0.2", "127.0.0.3")
}  # relay, latched, stranger


def load_extension(path: str | None) -> Any:
    """media._srtp from ``path`` (a sanitizer build outside the tree) before anything
    imports the in-place one; the package's Python modules stay the tree's."""
    if path is not None:
        spec = importlib.util.spec_from_file_location("media._srtp", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["media._srtp"] = module
        spec.loader.exec_module(module)
    sys.path.insert(0, str(ROOT))
    from media import _srtp

    if path is not None:
        assert Path(_srtp.__file__).resolve() == Path(path).resolve(), _srtp.__file__
    return _srtp


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


# ---------------------------------------------------------------- datagrams


def rtp_packet(rng: random.Random, ssrc: int, seq: int) -> bytes:
    cc = rng.choice((0, 0, 0, 1, 2, 15))
    ext = rng.random() < 0.2
    pt = rng.choice((0, 8, 96, 111, rng.randrange(128)))
    first = 0x80 | (0x10 if ext else 0) | (0x20 if rng.random() < 0.05 else 0) | cc
    head = struct.pack("!BBHII", first, pt | (0x80 if rng.random() < 0.1 else 0), seq & 0xFFFF,
                       rng.getrandbits(32), ssrc)  # fmt: skip
    head += b"".join(struct.pack("!I", rng.getrandbits(32)) for _ in range(cc))
    if ext:
        words = rng.choice((0, 1, 3))
        head += struct.pack("!HH", 0xBEDE, words) + rng.randbytes(4 * words)
    return head + rng.randbytes(rng.choice((0, 20, 160, 160, 1200)))


def rtcp_packet(rng: random.Random, ssrc: int) -> bytes:
    pt = rng.choice((200, 201, 202, 203, 204, 205, 206))
    body = rng.randbytes(4 * rng.choice((0, 1, 5, 6, 12)))
    first = struct.pack("!BBHI", 0x80 | rng.randrange(32), pt, (len(body) + 4) // 4, ssrc) + body
    if rng.random() < 0.5:  # compound: SDES after
        sdes = struct.pack("!BBHI", 0x81, 202, 2, ssrc) + b"\x01\x02ab\x00\x00"[:4]
        first += sdes
    return first


def stun_packet(rng: random.Random) -> bytes:
    attrs = rng.randbytes(4 * rng.randrange(12))
    kind = rng.choice((0x0001, 0x0101, 0x0111, rng.getrandbits(14)))
    return struct.pack("!HHI", kind, len(attrs), 0x2112A442) + rng.randbytes(12) + attrs


def dtls_packet(rng: random.Random) -> bytes:
    body = rng.randbytes(rng.randrange(200))
    return (
        struct.pack("!BHHH", rng.randrange(20, 64), 0xFEFD, rng.getrandbits(16), len(body)) + body
    )


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(6)
        if op == 0 and b:
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            del b[rng.randrange(len(b)) :]
        elif op == 2:
            b += rng.randbytes(rng.randrange(1, 64))
        elif op == 3 and b:
            i = rng.randrange(len(b))
            b[i : i + 4] = rng.randbytes(4)
        elif op == 4 and b:
            b[0] = rng.choice((0x80, 0x90, 0x8F, 0xBF, 0x00, 0x16))
        elif op == 5 and len(b) > 1:
            b[1] = rng.choice((200, 201, 72, 79, 0, 255))
    return bytes(b)


# ---------------------------------------------------------------- the table


@dataclass
class Leg:
    handle: int
    family: int
    sock: socket.socket
    rtcp_sock: socket.socket | None  # None: RTCP on sock (mux, or no separate port)
    endpoint: socket.socket  # latched: the leg's source and destination
    rtcp_endpoint: socket.socket
    webrtc: bool
    key: bytes | None = None  # the inbound key: what the endpoint protects with
    suite: str = SUITES[0]
    sender: Any = None  # an outbound Context under ``key``, the endpoint's
    ssrcs: list[int] = field(default_factory=list)
    seq: dict[int, int] = field(default_factory=dict)
    sent_srtp: list[tuple[bool, bytes]] = field(default_factory=list)  # for replays


class Fuzz:
    def __init__(self, srtp: Any, rng: random.Random, families: list[int]) -> None:
        from media.fastpath import FastPath

        self.srtp, self.rng, self.families = srtp, rng, families
        # Loops that poll while they are busy (fastpath_poll_us, _busy_pct; a low
        # threshold): the fuzz load moves them between polling and sleeping.
        self.fp = FastPath(
            loops=2, max_legs=64, rtcp_rate=50.0, rtcp_burst=20.0, poll_us=100, poll_busy_pct=5
        )
        self.legs: dict[int, Leg] = {}
        self.final: list[dict[str, Any]] = []  # final counters of removed legs
        self.strangers = {f: self.udp(f, 2) for f in families}
        self.stats: dict[str, int] = {
            "sent": 0, "send_failed": 0, "drained": 0, "forward_calls": 0, "forwarded": 0,
            "forward_keyerror": 0, "legs_added": 0, "legs_removed": 0, "rekeys": 0,
            "repairs": 0, "relatches": 0, "reinjected": 0, "table_reads": 0,
        }  # fmt: skip

    def udp(self, family: int, role: int) -> socket.socket:
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.bind((HOSTS[family][role], 0))
        s.setblocking(False)
        return s

    @staticmethod
    def addr(s: socket.socket) -> tuple[str, int]:
        host, port = s.getsockname()[:2]
        return host, port

    def context(self, key: bytes, suite: str, direction: str) -> Any:
        return self.srtp.Context(key[:16], key[16:], suite, direction=direction)

    # -- legs

    def add_leg(self) -> Leg:
        rng, fp = self.rng, self.fp
        family = rng.choice(self.families)
        mux = rng.random() < 0.6
        sock = self.udp(family, 0)
        rtcp_sock = None if mux or rng.random() < 0.3 else self.udp(family, 0)
        webrtc = rng.random() < 0.15
        handle = fp.add_leg(sock, rtcp_sock, mux=mux, webrtc=webrtc)
        endpoint = self.udp(family, 1)
        rtcp_endpoint = endpoint if rtcp_sock is None else self.udp(family, 1)
        leg = Leg(handle, family, sock, rtcp_sock, endpoint, rtcp_endpoint, webrtc)
        leg.ssrcs = [rng.getrandbits(32) for _ in range(rng.choice((1, 2, 4)))]
        self.legs[handle] = leg
        fp.set_addresses(handle, rtp_source=self.addr(endpoint),
                         rtcp_source=self.addr(rtcp_endpoint),
                         rtp_destination=self.addr(endpoint),
                         rtcp_destination=self.addr(rtcp_endpoint))  # fmt: skip
        if not webrtc or rng.random() < 0.5:
            self.rekey(leg)
        self.repair(leg)
        self.stats["legs_added"] += 1
        return leg

    def rekey(self, leg: Leg) -> None:
        """New crypto for the leg: SRTP in and/or out, or plain (a webrtc leg: keys)."""
        rng = self.rng
        srtp_in, srtp_out = rng.random() < 0.5, rng.random() < 0.5
        if leg.webrtc:
            srtp_in = srtp_out = True
        leg.suite = rng.choice(SUITES)
        leg.key = rng.randbytes(30) if srtp_in else None
        leg.sender = self.context(leg.key, leg.suite, "outbound") if leg.key else None
        leg.sent_srtp.clear()
        inbound = self.context(leg.key, leg.suite, "inbound") if leg.key else None
        outbound = self.context(rng.randbytes(30), leg.suite, "outbound") if srtp_out else None
        self.fp.set_crypto(leg.handle, inbound, outbound)
        self.stats["rekeys"] += 1

    def repair(self, leg: Leg) -> None:
        """A peer for the leg: another leg, itself (echo) or none."""
        rng, others = self.rng, [h for h in self.legs if h != leg.handle]
        choice = rng.random()
        if choice < 0.2:
            self.fp.echo(leg.handle)
        elif choice < 0.3 or not others:
            self.fp.pair(leg.handle, None)
        else:
            self.fp.pair(leg.handle, rng.choice(others))
        self.stats["repairs"] += 1

    def remove_leg(self, leg: Leg) -> None:
        counters = self.fp.remove_leg(leg.handle)
        self.check_leg(leg.handle, counters)
        self.final.append(self.as_dict(counters))
        del self.legs[leg.handle]
        for s in {leg.sock, leg.rtcp_sock, leg.endpoint, leg.rtcp_endpoint} - {None}:
            assert s is not None
            s.close()
        self.stats["legs_removed"] += 1

    @staticmethod
    def as_dict(c: Any) -> dict[str, Any]:
        return {"received": c.received, "packets_in": c.packets_in, "to_python": c.to_python,
                "dropped": c.dropped, "drops": dict(c.drops)}  # fmt: skip

    @staticmethod
    def check_leg(handle: int, c: Any) -> None:
        assert c.received == c.packets_in + c.dropped, (handle, c)
        assert c.rtcp_in <= c.packets_in and c.auth_failures <= c.dropped, (handle, c)

    # -- traffic

    def datagram(self, leg: Leg) -> tuple[bytes, bool]:
        """A datagram for the leg, and whether it goes to its RTCP socket."""
        rng = self.rng
        r = rng.random()
        ssrc = rng.choice(leg.ssrcs) if rng.random() < 0.95 else rng.getrandbits(32)
        rtcp = r < 0.25
        if r < 0.7:
            seq = leg.seq.get(ssrc, rng.getrandbits(16))
            leg.seq[ssrc] = seq + rng.choice((1, 1, 1, 2, 0x8000))
            data = rtcp_packet(rng, ssrc) if rtcp else rtp_packet(rng, ssrc, seq)
            if leg.sender is not None and rng.random() < 0.85:
                try:
                    data = (leg.sender.protect_rtcp if rtcp else leg.sender.protect_rtp)(data)
                    leg.sent_srtp.append((rtcp, data))
                    del leg.sent_srtp[:-32]
                except Exception:  # SSRC past the context's limit: sent plain
                    pass
        elif r < 0.75 and leg.sent_srtp:
            rtcp, data = rng.choice(leg.sent_srtp)  # a replay
        elif r < 0.82:
            data = stun_packet(rng)
        elif r < 0.88:
            data = dtls_packet(rng)
        elif r < 0.95:
            data = rng.randbytes(rng.choice((0, 1, 7, 11, 12, 40, 300)))
        else:
            data = rng.randbytes(rng.choice((2047, 2048, 2049, 4000)))  # too_long past 2048
        if rng.random() < 0.3:
            data = mutate(rng, data)
        return data, rtcp and leg.rtcp_sock is not None

    def send(self, src: socket.socket, data: bytes, dst: tuple[str, int]) -> None:
        try:
            src.sendto(data, dst)
            self.stats["sent"] += 1
        except OSError:  # a full buffer: the plane is behind, fine
            self.stats["send_failed"] += 1

    def send_one(self) -> None:
        rng = self.rng
        leg = self.legs[rng.choice(list(self.legs))]
        data, to_rtcp = self.datagram(leg)
        target = leg.rtcp_sock if to_rtcp and leg.rtcp_sock is not None else leg.sock
        if rng.random() < 0.8:
            src = leg.rtcp_endpoint if to_rtcp else leg.endpoint
        else:
            src = self.strangers[leg.family]
        self.send(src, data, self.addr(target))

    def reinject(self) -> None:
        """What the plane sent the endpoints: read, and some of it sent back in,
        mutated, from the endpoint (latched) to its leg."""
        rng = self.rng
        for leg in list(self.legs.values()):
            for s in {leg.endpoint, leg.rtcp_endpoint}:
                for _ in range(64):
                    try:
                        data = s.recv(65536)
                    except OSError:
                        break
                    if rng.random() < 0.02:
                        self.send(s, mutate(rng, data) if rng.random() < 0.7 else data,
                                  self.addr(leg.sock))  # fmt: skip
                        self.stats["reinjected"] += 1

    # -- Python's side: punts, forward, latching

    def drain(self) -> None:
        rng, fp = self.rng, self.fp
        for p in fp.drain(rng.choice((8, 64, 1024))):
            self.stats["drained"] += 1
            if rng.random() < 0.5:
                handle = p.leg
                if rng.random() < 0.05:  # a slot with no leg (removed, or never used)
                    handle = rng.choice([h for h in range(64) if h not in self.legs])
                rtcp = p.on_rtcp_socket or int(p.kind) == 1
                if rng.random() < 0.1:
                    rtcp = not rtcp
                self.stats["forward_calls"] += 1
                try:
                    result = fp.forward(handle, rtcp, p.data)
                except KeyError:
                    self.stats["forward_keyerror"] += 1
                    assert handle not in self.legs, handle
                    continue
                assert result.verdict in VERDICTS, result
                self.stats["forwarded"] += result.forwarded
            if rng.random() < 0.02 and p.leg in self.legs:  # latch the punt's source
                self.relatch(self.legs[p.leg], p.source)

    def relatch(self, leg: Leg, source: tuple[str, int]) -> None:
        self.fp.latch(leg.handle, source)
        self.stats["relatches"] += 1

    def table_change(self) -> None:
        rng, fp = self.rng, self.fp
        leg = self.legs[rng.choice(list(self.legs))]
        op = rng.randrange(10)
        if op == 0 and len(self.legs) > 4:
            self.remove_leg(leg)
            self.add_leg()
        elif op == 1:
            self.rekey(leg)
        elif op == 2:
            fp.set_crypto(leg.handle, None, None)
            leg.key, leg.sender = None, None
        elif op == 3:
            self.repair(leg)
        elif op == 4:
            leg.webrtc = rng.random() < 0.3
            fp.set_flags(leg.handle, mux=rng.random() < 0.6, webrtc=leg.webrtc)
        elif op == 5:  # latch elsewhere, or back to the endpoint
            if rng.random() < 0.5:
                self.relatch(leg, self.addr(self.strangers[leg.family]))
            else:
                fp.set_addresses(leg.handle, rtp_source=self.addr(leg.endpoint),
                                 rtcp_source=self.addr(leg.rtcp_endpoint),
                                 rtp_destination=self.addr(leg.endpoint),
                                 rtcp_destination=self.addr(leg.rtcp_endpoint))  # fmt: skip
        elif op == 6:
            fp.set_addresses(leg.handle, rtp_source=self.addr(leg.endpoint))  # no destination
        elif op == 7:
            fp.set_clock(rng.choice((None, None, rng.uniform(1.0, 1e6))))
        elif op == 8 and len(self.legs) < 60:
            self.add_leg()
        else:
            self.stats["table_reads"] += 1
            # A live read is no snapshot (each counter is read on its own while the
            # loop counts): the books are checked on removal and after stop().
            fp.counters(leg.handle)
            fp.ssrcs(leg.handle)
            fp.drop_sources(leg.handle)
            fp.addresses(leg.handle)
            fp.loop_stats()

    def flood(self) -> None:
        """STUN, undrained, into one leg past its punt budget (400 at once:
        punt_limited), then into every leg, together past their loop's punt ring (512:
        punt_overflow)."""
        legs = list(self.legs.values())
        while batch := self.fp.drain(1024):  # an empty ring: the budget is what limits
            self.stats["drained"] += len(batch)
        for round_ in range(10):
            for leg in legs[:1] if round_ < 7 else legs:
                for _ in range(100):
                    self.send(leg.endpoint, stun_packet(self.rng), self.addr(leg.sock))
                time.sleep(0.002)  # the loop reads: the socket buffer is not what overflows
        time.sleep(0.05)

    # -- the run

    def run(self, datagrams: int, seconds: float) -> None:
        rng = self.rng
        for _ in range(12):
            self.add_leg()
        self.fp.start()
        end = time.monotonic() + seconds
        hold = 0  # sends left without draining: lets the punt rings overflow
        for i in range(datagrams):
            if i % 256 == 0 and time.monotonic() > end:
                break
            self.send_one()
            if i == 2000:
                self.flood()
            if hold > 0:
                hold -= 1
                continue
            if i % 32 == 0:
                self.drain()
                if rng.random() < 0.01:
                    hold = 2000
            if i % 128 == 0:
                self.reinject()
            if i % 97 == 0:
                self.table_change()
        time.sleep(0.2)  # what is in flight reaches the loops
        self.fp.stop()
        while batch := self.fp.drain(1024):
            self.stats["drained"] += len(batch)

    def finish(self) -> dict[str, Any]:
        fp = self.fp
        read = sum(s["packets"] for s in fp.loop_stats())
        # Half the legs removed one by one, the rest left in the table for close()
        # to free (its own path: se_fp_free closes them, the binding drops their
        # Contexts); their counters read after stop().
        legs = list(self.legs.values())
        for leg in legs[: len(legs) // 2]:
            self.remove_leg(leg)
        for leg in legs[len(legs) // 2 :]:
            counters = fp.counters(leg.handle)
            self.check_leg(leg.handle, counters)
            self.final.append(self.as_dict(counters))
        decided = sum(c["received"] for c in self.final)
        punted = sum(c["to_python"] for c in self.final)
        assert read == decided + punted, (read, decided, punted)
        assert punted == self.stats["drained"], (punted, self.stats["drained"])
        fp.close()
        for leg in legs[len(legs) // 2 :]:
            for sock in {leg.sock, leg.rtcp_sock, leg.endpoint, leg.rtcp_endpoint} - {None}:
                assert sock is not None
                sock.close()
        self.legs.clear()
        for s in self.strangers.values():
            s.close()
        return {**self.stats, "loop_read": read, "decided_in_c": decided, "punted": punted,
                "packets_in": sum(c["packets_in"] for c in self.final),
                "dropped": sum(c["dropped"] for c in self.final),
                "drops": {reason: sum(c["drops"].get(reason, 0) for c in self.final)
                          for reason in self.srtp.PLANE_DROPS}}  # fmt: skip


def abandoned_plane(srtp: Any) -> None:
    """A running plane with legs, crypto and traffic, dropped without close(): the
    binding's dealloc must stop the loops and free it all."""
    from media.fastpath import FastPath

    fp = FastPath(loops=1, max_legs=4)
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    a, b = fp.add_leg(socks[0]), fp.add_leg(socks[1])
    fp.pair(a, b)
    key = bytes(range(30))
    fp.set_crypto(a, srtp.Context(key[:16], key[16:], SUITES[0], direction="inbound"), None)
    fp.set_crypto(b, None, srtp.Context(key[:16], key[16:], SUITES[1], direction="outbound"))
    fp.latch(a, Fuzz.addr(socks[2]))
    fp.latch(b, Fuzz.addr(socks[2]))
    fp.start()
    for i in range(50):
        socks[2].sendto(rtp_packet(random.Random(i), 1, i), Fuzz.addr(socks[0]))
    time.sleep(0.05)
    del fp
    for s in socks:
        s.close()


def canary(kind: str, srtp: Any) -> None:
    """Deliberate bugs, to show that fuzz/asan_run.py sees them (and fails)."""
    if kind == "uaf":  # a use after free, through the sanitizer's memset interceptor
        libc = ctypes.CDLL(None)
        libc.malloc.restype = ctypes.c_void_p
        libc.free.argtypes = [ctypes.c_void_p]
        p = libc.malloc(64)
        libc.free(p)
        ctypes.memset(p, 0, 64)
    elif kind == "leak":  # memory lost in C (LeakSanitizer's to see, at exit)
        libc = ctypes.CDLL(None)
        libc.malloc.restype = ctypes.c_void_p
        libc.malloc(77)
    elif kind == "refleak":  # a lost reference to a Context (the harness's to see)
        ctx = srtp.Context(bytes(16), bytes(14), SUITES[0], direction="inbound")
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(ctx))
        del ctx


def live(srtp: Any) -> int:
    """Contexts and Planes still alive: a lost reference in the binding keeps them in
    CPython's GC lists, where LeakSanitizer counts them as reachable."""
    gc.collect()
    return sum(type(o) in (srtp.Context, srtp.Plane) for o in gc.get_objects())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datagrams", type=int, default=20000)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--ext", help="media._srtp to load (a sanitizer build)")
    ap.add_argument("--canary", choices=("uaf", "leak", "refleak"))
    args = ap.parse_args()
    srtp = load_extension(args.ext)
    VERDICTS.update(srtp.PLANE_DROPS)
    if args.canary:
        canary(args.canary, srtp)
    families: list[int] = [socket.AF_INET]
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        families.append(socket.AF_INET6)
        HOSTS[socket.AF_INET6] = ("::1", "::1", "::1")
    except OSError:
        pass
    gc.collect()
    fds0, threads0 = open_fds(), threads()
    fuzz = Fuzz(srtp, random.Random(args.seed), families)
    t0 = time.monotonic()
    fuzz.run(args.datagrams, args.seconds)
    summary = fuzz.finish()
    del fuzz
    abandoned_plane(srtp)
    gc.collect()
    summary.update(seconds=round(time.monotonic() - t0, 2), seed=args.seed,
                   families=len(families), fds=open_fds() - fds0,
                   threads=threads() - threads0, objects=live(srtp))  # fmt: skip
    print(json.dumps(summary), flush=True)
    assert summary["fds"] == 0 and summary["threads"] == 0 and summary["objects"] == 0, summary
    return 0


if __name__ == "__main__":
    sys.exit(main())
