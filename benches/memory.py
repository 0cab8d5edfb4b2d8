#!/usr/bin/env python3
"""Memory of a svidcar pair under a flood of idle connections (issues #13/#15).

Starts two sidecar proxies (`svidcar-proxy run`, the proxy-only binary injected pods run; or
`svidcar run` with `--binary target/release/svidcar`: the same flags and code) on loopback with PEM identities made by `openssl` (a client
proxy with one explicit outbound route, a STRICT explicit inbound in front of a small echo
backend in a child process), then:

  baseline (idle) -> flood (N connections through the pair, each echoes one ping, then stays
  open and idle) -> excess (M more, which the client proxy must refuse: limits.max_connections)
  -> hold -> close (all at once) -> settle

sampling each proxy's VmRSS and open fds every 250 ms, and prints the curve as a table with a
summary: RSS at baseline, peak, with N open and after settling; bytes per connection
((RSS with N open - baseline) / N); fds before and after; how many were refused and what the
client proxy's /metrics counted. `--floods 3` repeats flood..settle to show whether RSS
ratchets. `--throughput` instead measures bulk MiB/s and new connections/s through the pair
(to compare allocators).

Usage (the sidecar binary as the image ships it, built by
`cargo build --profile sidecar -p svidcar-sidecar`; `--binary` names another, e.g. the CLI):

  python3 benches/memory.py                       # 10 000 + 200, one flood
  python3 benches/memory.py --floods 3 --conns 5000
  python3 benches/memory.py --env MALLOC_ARENA_MAX=2 --worker-threads 1
  python3 benches/memory.py --throughput
  python3 benches/memory.py --conns 0 --breakdown --binary target/release/svidcar

Everything stays on 127.0.0.1; every wait is bounded; the proxies are killed on exit. Needs
`openssl`. A proxy holds two fds per connection: with a hard RLIMIT_NOFILE it cannot raise
(no CAP_SYS_RESOURCE) below 2 * (conns + excess) + 200, the flood is cut to fit and says so.
"""

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TD = "svidcar.bench"
CLIENT_ID = f"spiffe://{TD}/ns/bench/sa/client"
SERVER_ID = f"spiffe://{TD}/ns/bench/sa/server"
MIB = 1024 * 1024


# ---------------------------------------------------------------------------------------------
# Identities


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_pki(d):
    """A throwaway CA and two X.509-SVIDs (P-256) as PEM files in `d`."""
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key", cwd=d)
    openssl(
        "req", "-x509", "-new", "-key", "ca.key", "-days", "2", "-subj", "/O=svidcar bench CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", f"subjectAltName=URI:spiffe://{TD}",
        "-out", "bundle.pem", cwd=d,
    )
    paths = {}
    for name, spiffe_id in (("client", CLIENT_ID), ("server", SERVER_ID)):
        with open(os.path.join(d, f"{name}.ext"), "w") as f:
            f.write(
                "basicConstraints=critical,CA:FALSE\n"
                "keyUsage=critical,digitalSignature\n"
                "extendedKeyUsage=serverAuth,clientAuth\n"
                f"subjectAltName=critical,URI:{spiffe_id}\n"
            )
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-out", f"{name}.key", cwd=d)
        openssl("req", "-new", "-key", f"{name}.key", "-subj", f"/O={name}", "-out",
                f"{name}.csr", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "bundle.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "1", "-extfile", f"{name}.ext", "-out",
                f"{name}.pem", cwd=d)
        paths[name] = (os.path.join(d, f"{name}.pem"), os.path.join(d, f"{name}.key"))
    return paths, os.path.join(d, "bundle.pem")


# ---------------------------------------------------------------------------------------------
# Proxies


class Proxy:
    """A proxy process (`<binary> run`) logging JSON to a file; its listeners from the start-up
    line."""

    def __init__(self, name, binary, args, log_dir, env):
        self.name = name
        self.binary = binary
        self.log = os.path.join(log_dir, f"{name}.log")
        e = dict(os.environ)
        e.update(env)
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [binary, "--log-format", "json", "run", *args],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, env=e,
            )
        self.pid = self.proc.pid
        self.started = self._wait_started()

    def _wait_started(self):
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"{self.name} proxy exited:\n{open(self.log).read()}")
            for line in open(self.log):
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if rec.get("message", "").startswith("svidcar proxy listening"):
                    return rec
            time.sleep(0.05)
        sys.exit(f"{self.name} proxy did not start:\n{open(self.log).read()}")

    def addr(self, field):
        s = self.started[field].strip("[]").split(",")[0].strip()
        host, port = s.rsplit(":", 1)
        return host, int(port)

    def rss_kib(self):
        return status_kib(self.pid, "VmRSS")

    def fds(self):
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def anon_file(self):
        """(RssAnon, RssFile) in KiB: the heap and stacks, and mapped file pages (the binary's
        code and data, the shared libraries)."""
        return status_kib(self.pid, "RssAnon"), status_kib(self.pid, "RssFile")

    def threads(self):
        return status_kib(self.pid, "Threads")

    def metrics(self):
        host, port = self.addr("admin")
        with socket.create_connection((host, port), timeout=5) as s:
            s.sendall(b"GET /metrics HTTP/1.0\r\nhost: x\r\n\r\n")
            chunks = []
            while True:
                b = s.recv(65536)
                if not b:
                    break
                chunks.append(b)
        return b"".join(chunks).decode(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def metric_sum(text, name, **labels):
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        lbls, value = line[len(name) + 1:].rsplit("} ", 1)
        if all(f'{k}="{v}"' in lbls for k, v in labels.items()):
            total += float(value)
    return total


# ---------------------------------------------------------------------------------------------
# Load


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.t = transport

    def data_received(self, data):
        self.t.write(data)

    def eof_received(self):
        return False  # close our side too


def echo_backend(conn):
    """The app behind the server proxy, in a process of its own (a process may hold only
    RLIMIT_NOFILE sockets, and the flood needs that many on each side). Sends its port on
    `conn`, serves until `conn` closes."""

    async def serve():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Echo, "127.0.0.1", 0, backlog=4096)
        conn.send(server.sockets[0].getsockname()[1])
        await loop.run_in_executor(None, conn.recv_bytes)  # EOFError when the parent goes

    try:
        asyncio.run(serve())
    except EOFError:
        pass


class Held(asyncio.Protocol):
    """A client connection that sends one ping, waits for the echo, then stays idle."""

    def __init__(self, loop):
        self.echoed = loop.create_future()
        self.closed = loop.create_future()
        self.t = None

    def connection_made(self, transport):
        self.t = transport
        transport.write(b"ping\n")

    def data_received(self, data):
        if not self.echoed.done():
            self.echoed.set_result(True)

    def connection_lost(self, exc):
        if not self.echoed.done():
            self.echoed.set_result(False)
        if not self.closed.done():
            self.closed.set_result(None)


async def open_held(loop, addr, n, parallel, deadline):
    """Opens `n` connections (at most `parallel` waiting for their echo at once); returns
    (held, refused) protocol lists."""
    sem = asyncio.Semaphore(parallel)
    held, refused = [], []

    async def one():
        async with sem:
            try:
                _, p = await loop.create_connection(lambda: Held(loop), *addr)
            except OSError:
                refused.append(None)
                return
            ok = await asyncio.wait_for(p.echoed, max(1.0, deadline - time.monotonic()))
            (held if ok else refused).append(p)

    await asyncio.gather(*(one() for _ in range(n)))
    return held, refused


class Sampler(threading.Thread):
    """Samples both proxies every `interval` s with the current phase and open count."""

    def __init__(self, proxies, interval):
        super().__init__(daemon=True)
        self.proxies = proxies
        self.interval = interval
        self.phase = "baseline"
        self.open = 0
        self.rows = []
        self.stopped = threading.Event()
        self.t0 = time.monotonic()

    def run(self):
        while not self.stopped.is_set():
            row = [time.monotonic() - self.t0, self.phase, self.open]
            for p in self.proxies:
                try:
                    row += [p.rss_kib(), p.fds()]
                except OSError:
                    row += [0, 0]
            self.rows.append(row)
            self.stopped.wait(self.interval)

    def at(self, phase):
        return [r for r in self.rows if r[1] == phase]


async def flood_once(loop, args, route, sampler, client, server, k):
    tag = f"#{k}" if args.floods > 1 else ""
    sampler.phase = "flood" + tag
    deadline = time.monotonic() + args.timeout
    held, failed = await open_held(loop, route, args.conns, args.parallel, deadline)
    sampler.open = len(held)
    if failed:
        print(f"warning: {len(failed)} of the first {args.conns} connections were not served",
              file=sys.stderr)
    sampler.phase = "excess" + tag
    more_held, refused = await open_held(loop, route, args.excess, args.parallel, deadline)
    held += more_held
    sampler.open = len(held)
    sampler.phase = "hold" + tag
    await asyncio.sleep(0.1)
    open_rss = (client.rss_kib(), server.rss_kib())
    open_split = (client.anon_file(), server.anon_file())
    open_fds = (client.fds(), server.fds())
    await asyncio.sleep(args.hold)
    sampler.phase = "close" + tag
    for p in held + refused:
        if p is not None and p.t is not None:
            p.t.close()
    await asyncio.wait_for(
        asyncio.gather(*(p.closed for p in held)), max(1.0, deadline - time.monotonic())
    )
    sampler.open = 0
    # The proxies notice the close, shut their other side and free the connection.
    end = time.monotonic() + 10
    while time.monotonic() < end and (client.fds() > args.base_fds[0] or
                                      server.fds() > args.base_fds[1]):
        await asyncio.sleep(0.05)
    sampler.phase = "settle" + tag
    await asyncio.sleep(args.settle)
    return {
        "held": len(held) - len(more_held),
        "excess_held": len(more_held),
        "refused": len(refused),
        "open_rss": open_rss,
        "open_split": open_split,
        "after_split": (client.anon_file(), server.anon_file()),
        "open_fds": open_fds,
        "after_rss": (client.rss_kib(), server.rss_kib()),
        "after_fds": (client.fds(), server.fds()),
        "flood_rows": sampler.at("flood" + tag) + sampler.at("excess" + tag)
        + sampler.at("hold" + tag),
    }


def mib(kib):
    return kib / 1024


def split(anon_file):
    return f"anon {mib(anon_file[0]):.1f} + file {mib(anon_file[1]):.1f}"


async def flood_main(args, client, server):
    loop = asyncio.get_running_loop()
    route = client.addr("outbound")
    sampler = Sampler([client, server], args.interval)
    await asyncio.sleep(args.idle)  # settle after start-up
    sampler.start()
    await asyncio.sleep(args.baseline)
    base_rss = (client.rss_kib(), server.rss_kib())
    base_split = (client.anon_file(), server.anon_file())
    args.base_fds = (client.fds(), server.fds())
    results = []
    for k in range(1, args.floods + 1):
        results.append(await flood_once(loop, args, route, sampler, client, server, k))
    sampler.stopped.set()
    sampler.join()
    if args.breakdown:
        print_breakdown([client, server], "after the flood")
    if args.linger:
        print(f"pids: client {client.pid}, server {server.pid}; lingering {args.linger:g} s",
              flush=True)
        await asyncio.sleep(args.linger)
    metrics = client.metrics()

    print(f"{'t (s)':>7} {'phase':<10} {'open':>6} {'client RSS':>11} {'server RSS':>11} "
          f"{'client fds':>10} {'server fds':>10}")
    for t, phase, n, crss, cfd, srss, sfd in sampler.rows:
        print(f"{t:7.2f} {phase:<10} {n:6d} {mib(crss):7.1f} MiB {mib(srss):7.1f} MiB "
              f"{cfd:10d} {sfd:10d}")
    print()
    print(f"binary: {args.binary}; worker threads: {args.worker_threads}; "
          f"env: {' '.join(args.env) or '-'}")
    for name, i in (("client", 0), ("server", 1)):
        print(f"{name} proxy: baseline {mib(base_rss[i]):.1f} MiB "
              f"({split(base_split[i])}), {args.base_fds[i]} fds")
        for k, r in enumerate(results, 1):
            peak = max(row[3 + 2 * i] for row in r["flood_rows"]) if r["flood_rows"] else 0
            per_conn = (r["open_rss"][i] - base_rss[i]) * 1024 / max(1, r["held"])
            print(f"  flood {k}: {r['held']} open: {mib(r['open_rss'][i]):.1f} MiB "
                  f"({per_conn:,.0f} B/connection), peak {mib(peak):.1f} MiB, "
                  f"{r['open_fds'][i]} fds; after close + {args.settle:g} s: "
                  f"{mib(r['after_rss'][i]):.1f} MiB "
                  f"(+{mib(r['after_rss'][i] - base_rss[i]):.1f}; {split(r['after_split'][i])}), "
                  f"{r['after_fds'][i]} fds")
    refused = sum(r["refused"] for r in results)
    excess_held = sum(r["excess_held"] for r in results)
    counted = metric_sum(metrics, "svidcar_tcp_connections_closed_total",
                         outcome="refused", reason="max_connections")
    print(f"excess: {args.excess * args.floods} tried, {refused} refused, {excess_held} served; "
          f"client /metrics counts {counted:.0f} refused as max_connections")
    return 0 if excess_held == 0 else 1


# ---------------------------------------------------------------------------------------------
# What an idle proxy's RSS is made of


def smaps_breakdown(pid, binary):
    """RSS (KiB) of an idle process by kind of mapping, from /proc/PID/smaps."""
    regions = []
    for line in open(f"/proc/{pid}/smaps"):
        head = line.split()
        if "-" in head[0] and len(head) >= 5 and ":" in head[3]:
            start, end = (int(x, 16) for x in head[0].split("-"))
            regions.append({"start": start, "end": end, "perm": head[1],
                            "path": head[5] if len(head) > 5 else "", "rss": 0})
        elif head[0] == "Rss:" and regions:
            regions[-1]["rss"] = int(head[1])
    stacks = thread_stack_starts(pid)
    out = {}
    for i, r in enumerate(regions):
        path, perm = r["path"], r["perm"]
        if path == binary:
            kind = "binary: " + ("code" if "x" in perm else
                                 "read-only data" if perm.startswith("r--") else "data, bss")
        elif path.startswith("/"):
            kind = "shared libraries (libc, libm, ld.so…)"
        elif path == "[heap]":
            kind = "heap: brk ([heap])"
        elif path == "[stack]":
            kind = "main thread stack"
        elif path.startswith("["):
            kind = "kernel ([vdso], [vvar])"
        elif any(r["start"] <= sp < r["end"] for sp in stacks):
            kind = "worker/blocking thread stacks"
        else:
            kind = "heap: anonymous mappings (arenas, large blocks)"
        out[kind] = out.get(kind, 0) + r["rss"]
    return out


def thread_stack_starts(pid):
    """A stack pointer of every thread but the main one (field 29 of its stat is 0 on recent
    kernels, so the start of the mapping holding the thread's `pthread` from its maps)."""
    sps = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        if int(tid) == pid:
            continue
        try:
            with open(f"/proc/{pid}/task/{tid}/syscall") as f:
                fields = f.read().split()
            if len(fields) >= 2:
                sps.append(int(fields[-2], 16))
        except (OSError, ValueError):
            pass
    return sps


def print_breakdown(proxies, when):
    for p in proxies:
        b = smaps_breakdown(p.pid, os.path.realpath(p.binary))
        total = sum(b.values())
        print(f"{p.name} proxy, {when}: VmRSS {mib(p.rss_kib()):.2f} MiB, {p.threads()} threads "
              f"(smaps total {total} KiB)")
        for kind, kib in sorted(b.items(), key=lambda kv: -kv[1]):
            if kib:
                print(f"  {kind:<48} {kib:6d} KiB")


# ---------------------------------------------------------------------------------------------
# Throughput (for comparing allocators)


def bulk(route, total):
    """Sends `total` bytes through the pair and reads the echo; returns MiB/s each way."""
    chunk = bytes(range(256)) * 4096  # 1 MiB
    s = socket.create_connection(route, timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    got = [0]

    def reader():
        buf = bytearray(MIB)
        while got[0] < total:
            n = s.recv_into(buf)
            if n == 0:
                break
            got[0] += n

    t = threading.Thread(target=reader)
    start = time.monotonic()
    t.start()
    sent = 0
    while sent < total:
        s.sendall(chunk)
        sent += len(chunk)
    t.join(timeout=120)
    elapsed = time.monotonic() - start
    s.close()
    if got[0] != total:
        sys.exit(f"bulk: echoed {got[0]} of {total} bytes")
    return total / MIB / elapsed


async def conn_rate(route, n, parallel):
    loop = asyncio.get_running_loop()
    start = time.monotonic()
    held, refused = await open_held(loop, route, n, parallel, start + 120)
    for p in held:
        p.t.close()
    if refused:
        sys.exit(f"conn rate: {len(refused)} connections not served")
    return n / (time.monotonic() - start)


async def throughput_main(args, client, server):
    route = client.addr("outbound")
    rates, bulks = [], []
    for _ in range(args.rounds):
        bulks.append(await asyncio.to_thread(bulk, route, args.bulk_mib * MIB))
        rates.append(await conn_rate(route, args.rate_conns, 16))
    print(f"binary: {args.binary}; worker threads: {args.worker_threads}; "
          f"env: {' '.join(args.env) or '-'}")
    print(f"bulk echo through the pair: median {statistics.median(bulks):.0f} MiB/s each way "
          f"({', '.join(f'{b:.0f}' for b in bulks)})")
    print(f"new connections (mTLS handshake + 1 echo, 16 at a time): median "
          f"{statistics.median(rates):.0f}/s ({', '.join(f'{r:.0f}' for r in rates)})")
    print(f"RSS after: client {mib(client.rss_kib()):.1f} MiB, "
          f"server {mib(server.rss_kib()):.1f} MiB")
    return 0


# ---------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/sidecar/svidcar-proxy"),
                    help="`svidcar-proxy` (default) or `svidcar`: both take `run` and its flags")
    ap.add_argument("--conns", type=int, default=10_000, help="connections held open")
    ap.add_argument("--excess", type=int, default=200,
                    help="connections beyond limits.max_connections (= --conns)")
    ap.add_argument("--floods", type=int, default=1)
    ap.add_argument("--parallel", type=int, default=256, help="connections opening at once")
    ap.add_argument("--idle", type=float, default=1.0, help="seconds after start, unsampled")
    ap.add_argument("--baseline", type=float, default=2.0, help="seconds sampled before")
    ap.add_argument("--hold", type=float, default=2.0)
    ap.add_argument("--settle", type=float, default=5.0)
    ap.add_argument("--interval", type=float, default=0.25)
    ap.add_argument("--timeout", type=float, default=120.0, help="bound of one flood")
    ap.add_argument("--worker-threads", type=int, default=None)
    ap.add_argument("--env", action="append", default=[], metavar="VAR=VALUE",
                    help="environment of the proxies (e.g. MALLOC_ARENA_MAX=2)")
    ap.add_argument("--breakdown", action="store_true",
                    help="print what the proxies' RSS is made of (/proc/PID/smaps): idle "
                    "with --conns 0, else after the flood")
    ap.add_argument("--linger", type=float, default=0,
                    help="seconds to keep the proxies after the flood (to inspect them)")
    ap.add_argument("--throughput", action="store_true")
    ap.add_argument("--bulk-mib", type=int, default=256)
    ap.add_argument("--rate-conns", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if not os.access(args.binary, os.X_OK):
        sys.exit(f"{args.binary}: not built (cargo build --profile sidecar -p svidcar-sidecar)")

    # Each proxy holds two sockets per connection (the app's side and the peer's); raise the
    # soft limit, which the proxies and the backend inherit, and the hard one if allowed (root
    # with CAP_SYS_RESOURCE).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * (args.conns + args.excess) + 200
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        fits = (hard - 200) // 200 * 100
        if not args.throughput and fits < args.conns:
            print(f"RLIMIT_NOFILE hard limit {hard} (not raisable here): a proxy holds two "
                  f"fds per connection, so {fits} connections instead of {args.conns}",
                  file=sys.stderr)
            args.conns = fits
    env = dict(kv.split("=", 1) for kv in args.env)

    with tempfile.TemporaryDirectory(prefix="svidcar-memory-") as d:
        paths, bundle = make_pki(d)
        (ccert, ckey), (scert, skey) = paths["client"], paths["server"]
        threads = [] if args.worker_threads is None else [
            "--worker-threads", str(args.worker_threads)]

        async def run():
            parent_end, child_end = multiprocessing.Pipe()
            backend = multiprocessing.Process(target=echo_backend, args=(child_end,),
                                              daemon=True)
            backend.start()
            if not parent_end.poll(10):
                sys.exit("the echo backend did not start")
            app_port = parent_end.recv()
            proxies = []
            try:
                server = Proxy("server", args.binary, [
                    "--cert", scert, "--key", skey, "--bundle", bundle,
                    "--outbound-enabled", "false", "--inbound-mode", "explicit",
                    "--inbound-listen", "127.0.0.1:0", "--inbound-app", f"127.0.0.1:{app_port}",
                    "--admin-listen", "127.0.0.1:0",
                    "--max-connections", str(args.conns + args.excess), *threads,
                ], d, env)
                proxies.append(server)
                inbound = "%s:%d" % server.addr("inbound")
                client = Proxy("client", args.binary, [
                    "--cert", ccert, "--key", ckey, "--bundle", bundle,
                    "--inbound-enabled", "false", "--outbound-mode", "explicit",
                    "--route", f"127.0.0.1:0={inbound},{SERVER_ID}",
                    "--admin-listen", "127.0.0.1:0",
                    "--max-connections", str(max(1, args.conns)), *threads,
                ], d, env)
                proxies.append(client)
                if args.breakdown and args.conns == 0:
                    await asyncio.sleep(args.idle + args.baseline)
                    print_breakdown([client, server], "idle")
                    return 0
                if args.throughput:
                    return await throughput_main(args, client, server)
                return await flood_main(args, client, server)
            finally:
                for p in proxies:
                    p.stop()
                parent_end.close()
                backend.join(timeout=5)
                if backend.is_alive():
                    backend.kill()

        return asyncio.run(run())


if __name__ == "__main__":
    sys.exit(main())
