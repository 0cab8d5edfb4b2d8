#!/usr/bin/env python3
"""Soak test of a svidcar proxy pair: a fixed request rate for a fixed time, with each proxy's
resident memory (VmRSS) and open file descriptors sampled every second; fails (exit 1) when
either grows beyond noise. See docs/soak.md for what it runs, what it measures and the limits.

    python3 benches/soak.py                      # 120 s at 200 req/s, target/release/svidcar
    python3 benches/soak.py --seconds 30 --svidcar target/debug/svidcar

Exit codes: 0 no growth, 1 growth beyond noise (or failed requests, or a proxy exited),
2 could not set up (no binary, no openssl, a proxy did not start).

Needs python3 (standard library only), openssl (to make the throwaway CA and SVIDs) and Linux
(/proc). Everything listens on 127.0.0.1 and lives in a temporary directory removed at the end.
"""

import argparse
import http.client
import http.server
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

TD = "example.org"
CLIENT_ID = f"spiffe://{TD}/ns/soak/sa/client"
SERVER_ID = f"spiffe://{TD}/ns/soak/sa/server"
BODY = b"x" * 1024
MIB = 1024 * 1024


def fail_setup(msg):
    print(f"soak: {msg}", file=sys.stderr)
    sys.exit(2)


# ----------------------------------------------------------------------------------------------
# A throwaway PKI (openssl): a CA and two X509-SVIDs, ECDSA P-256.


def openssl(*args, cwd):
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        fail_setup(f"openssl {' '.join(args)} failed: {r.stderr.strip()}")


def make_pki(d):
    with open(os.path.join(d, "ca.ext"), "w") as f:
        f.write(
            "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"
            f"subjectAltName=URI:spiffe://{TD}\nsubjectKeyIdentifier=hash\n"
        )
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-out", "ca_key.pem", cwd=d)
    openssl("req", "-new", "-key", "ca_key.pem", "-subj", "/O=soak/CN=soak CA",
            "-out", "ca.csr", cwd=d)
    openssl("x509", "-req", "-in", "ca.csr", "-signkey", "ca_key.pem", "-days", "2",
            "-extfile", "ca.ext", "-out", "bundle.pem", cwd=d)
    files = {}
    for name, spiffe_id in (("client", CLIENT_ID), ("server", SERVER_ID)):
        with open(os.path.join(d, f"{name}.ext"), "w") as f:
            f.write(
                "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                "extendedKeyUsage=serverAuth,clientAuth\n"
                f"subjectAltName=critical,URI:{spiffe_id}\n"
            )
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-out", f"{name}_key.pem", cwd=d)
        openssl("req", "-new", "-key", f"{name}_key.pem", "-subj", "/O=soak", "-out",
                f"{name}.csr", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "bundle.pem", "-CAkey",
                "ca_key.pem", "-CAcreateserial", "-days", "1", "-extfile", f"{name}.ext",
                "-out", f"{name}.pem", cwd=d)
        files[name] = [os.path.join(d, x) for x in (f"{name}.pem", f"{name}_key.pem", "bundle.pem")]
    return files


# ----------------------------------------------------------------------------------------------
# The app: HTTP/1.1 keep-alive, 200 with a 1 KiB body.


class App(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args):
        pass


def start_app():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), App)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# ----------------------------------------------------------------------------------------------
# The proxies


class Proxy:
    def __init__(self, name, svidcar, args, d):
        self.name = name
        self.log = os.path.join(d, f"{name}.log")
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [svidcar, "--log-format", "json", "--log", "info,svidcar::access=warn", "run",
                 "--admin-enabled", "false", *args],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        self.listening = self._wait_listening()

    def _wait_listening(self):
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            with open(self.log) as f:
                for line in f:
                    try:
                        v = json.loads(line)
                    except ValueError:
                        continue
                    if v.get("message", "").startswith("svidcar proxy listening"):
                        return v
            time.sleep(0.05)
        self.stop()
        with open(self.log) as f:
            fail_setup(f"the {self.name} proxy did not start:\n{f.read()}")

    def addr(self, field):
        text = self.listening[field].strip("[]").split(",")[0].strip()
        host, port = text.rsplit(":", 1)
        return host, int(port)

    def sample(self):
        """(VmRSS in bytes, open fds) now."""
        rss = 0
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
        return rss, len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ----------------------------------------------------------------------------------------------
# The load: a fixed rate, spread over workers; every other request on a fresh connection (so
# connection setup and teardown are soaked too), the rest on one keep-alive connection per worker.


class Load:
    def __init__(self, addr, rate, workers):
        self.addr, self.rate, self.workers = addr, rate, workers
        self.ok = 0
        self.failed = 0
        self.errors = {}
        self.latencies = []
        self.lock = threading.Lock()
        self.stop_at = None
        self.threads = []

    def _request(self, conn):
        conn.request("GET", "/soak", headers={"host": "app"})
        r = conn.getresponse()
        body = r.read()
        if r.status != 200 or body != BODY:
            raise IOError(f"status {r.status}, {len(body)} bytes")

    def _worker(self, i):
        period = self.workers / self.rate
        keep = None
        n = 0
        next_at = time.monotonic() + period * i / self.workers
        while True:
            now = time.monotonic()
            if now >= self.stop_at:
                break
            if next_at > now:
                time.sleep(next_at - now)
            next_at += period
            fresh = n % 2 == 0
            n += 1
            began = time.monotonic()
            try:
                if fresh:
                    c = http.client.HTTPConnection(*self.addr, timeout=5)
                    c.request("GET", "/soak", headers={"host": "app", "connection": "close"})
                    r = c.getresponse()
                    body = r.read()
                    c.close()
                    if r.status != 200 or body != BODY:
                        raise IOError(f"status {r.status}, {len(body)} bytes")
                else:
                    if keep is None:
                        keep = http.client.HTTPConnection(*self.addr, timeout=5)
                    self._request(keep)
                with self.lock:
                    self.ok += 1
                    self.latencies.append(time.monotonic() - began)
            except (OSError, http.client.HTTPException) as e:
                if keep is not None and not fresh:
                    keep.close()
                    keep = None
                with self.lock:
                    self.failed += 1
                    key = f"{type(e).__name__}: {e}"[:120]
                    self.errors[key] = self.errors.get(key, 0) + 1
        if keep is not None:
            keep.close()

    def start(self, seconds):
        self.stop_at = time.monotonic() + seconds
        for i in range(self.workers):
            t = threading.Thread(target=self._worker, args=(i,), daemon=True)
            t.start()
            self.threads.append(t)

    def join(self):
        for t in self.threads:
            t.join(timeout=30)


# ----------------------------------------------------------------------------------------------
# Figures


def slope_per_minute(points):
    """Least-squares slope of (seconds, value) points, per minute."""
    if len(points) < 2:
        return 0.0
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    if den == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den * 60


def judge(name, samples, warmup, idle_fds, fds_after, rss_floor, rss_frac):
    """Prints one proxy's summary; returns the list of problems."""
    steady = [s for s in samples if s[0] >= warmup]
    if len(steady) < 10:
        return [f"{name}: only {len(steady)} samples after the warm-up; run longer"]
    rss = [s[1] for s in steady]
    fds = [s[2] for s in steady]
    # Start and end are medians of five samples, so one GC-like blip does not decide.
    start = statistics.median(rss[:5])
    end = statistics.median(rss[-5:])
    allowed = max(rss_floor, start * rss_frac)
    slope = slope_per_minute([(s[0], s[1]) for s in steady])
    print(f"  {name}: VmRSS start {start / MIB:.2f} MiB, p50 {statistics.median(rss) / MIB:.2f}, "
          f"max {max(rss) / MIB:.2f}, end {end / MIB:.2f} MiB "
          f"(growth {(end - start) / MIB:+.2f} MiB, allowed {allowed / MIB:.2f}); "
          f"slope {slope / MIB:+.3f} MiB/min")
    print(f"  {name}: fds idle {idle_fds}, under load start {fds[0]}, "
          f"p50 {statistics.median(fds):.0f}, max {max(fds)}, end {fds[-1]}, "
          f"after the load {fds_after}; slope {slope_per_minute([(s[0], s[2]) for s in steady]):+.2f}/min")
    problems = []
    if end > start + allowed:
        problems.append(f"{name}: VmRSS grew {(end - start) / MIB:.2f} MiB "
                        f"(more than {allowed / MIB:.2f} MiB) after the warm-up")
    if fds_after > idle_fds:
        problems.append(f"{name}: {fds_after} fds after the load, {idle_fds} before it")
    return problems


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=120, help="load duration (default 120)")
    ap.add_argument("--rate", type=float, default=200, help="requests per second (default 200)")
    ap.add_argument("--workers", type=int, default=8, help="client threads (default 8)")
    ap.add_argument("--warmup", type=float, default=10,
                    help="seconds of load before the start figures are taken (default 10)")
    ap.add_argument("--svidcar", default=os.path.join(here, "..", "target", "release", "svidcar"),
                    help="the binary (default target/release/svidcar)")
    ap.add_argument("--rss-floor-mib", type=float, default=2.0,
                    help="RSS growth always tolerated, MiB (default 2)")
    ap.add_argument("--rss-fraction", type=float, default=0.10,
                    help="RSS growth tolerated as a fraction of the start (default 0.10)")
    ap.add_argument("--samples", help="write every sample here as CSV")
    args = ap.parse_args()
    svidcar = os.path.abspath(args.svidcar)
    if not os.access(svidcar, os.X_OK):
        fail_setup(f"{svidcar} is not an executable; build it (cargo build --release --locked "
                   "--bin svidcar) or pass --svidcar PATH")
    if args.seconds < args.warmup + 10:
        fail_setup(f"--seconds must be at least the warm-up ({args.warmup:g} s) plus 10")

    with tempfile.TemporaryDirectory(prefix="svidcar-soak-") as d:
        pki = make_pki(d)
        app = start_app()
        proxies = []
        try:
            opts = lambda files: ["--cert", files[0], "--key", files[1], "--bundle", files[2]]
            server = Proxy("server", svidcar, [
                *opts(pki["server"]), "--outbound-enabled", "false", "--inbound-mode", "explicit",
                "--inbound-listen", "127.0.0.1:0",
                "--inbound-app", f"127.0.0.1:{app.server_address[1]}"], d)
            proxies.append(server)
            host, port = server.addr("inbound")
            client = Proxy("client", svidcar, [
                *opts(pki["client"]), "--inbound-enabled", "false", "--outbound-mode", "explicit",
                "--route", f"127.0.0.1:0={host}:{port},{SERVER_ID}"], d)
            proxies.append(client)
            route = client.addr("outbound")
            # One request end to end, then the idle fd baseline.
            probe = Load(route, 1, 1)
            probe.stop_at = time.monotonic() + 0.5
            probe._worker(0)
            if probe.ok == 0:
                fail_setup(f"no request got through the pair: {probe.errors}")
            time.sleep(1)
            idle = {p.name: p.sample()[1] for p in proxies}

            print(f"soak: {args.seconds:g} s at {args.rate:g} req/s through {svidcar} "
                  f"(half on fresh connections, half keep-alive; {args.workers} workers; "
                  f"warm-up {args.warmup:g} s)")
            load = Load(route, args.rate, args.workers)
            t0 = time.monotonic()
            load.start(args.seconds)
            samples = {p.name: [] for p in proxies}
            next_at = t0
            while time.monotonic() < t0 + args.seconds:
                for p in proxies:
                    rss, fds = p.sample()
                    samples[p.name].append((time.monotonic() - t0, rss, fds))
                next_at += 1
                time.sleep(max(0, next_at - time.monotonic()))
            load.join()
            elapsed = time.monotonic() - t0
            # Connections closed: the fds must come back to the idle baseline (bounded wait).
            deadline = time.monotonic() + 10
            while True:
                after = {p.name: p.sample()[1] for p in proxies}
                if all(after[n] <= idle[n] for n in after) or time.monotonic() > deadline:
                    break
                time.sleep(0.2)

            achieved = load.ok / elapsed
            lat = sorted(load.latencies) or [0.0]
            print(f"  requests: {load.ok} ok, {load.failed} failed, {achieved:.1f}/s achieved; "
                  f"latency p50 {lat[len(lat) // 2] * 1000:.1f} ms, "
                  f"p99 {lat[min(len(lat) - 1, len(lat) * 99 // 100)] * 1000:.1f} ms")
            for e, n in sorted(load.errors.items(), key=lambda x: -x[1])[:5]:
                print(f"    {n} × {e}")
            problems = []
            for p in proxies:
                problems += judge(p.name, samples[p.name], args.warmup, idle[p.name],
                                  after[p.name], args.rss_floor_mib * MIB, args.rss_fraction)
            if load.failed:
                problems.append(f"{load.failed} requests failed")
            if achieved < 0.95 * args.rate:
                # Not a failure: on a busy machine the pacing falls behind; the figures still
                # compare start and end under the same load.
                print(f"  warning: only {achieved:.1f} req/s of {args.rate:g} "
                      "(the machine is busy, or the binary is a debug build)")
            if args.samples:
                with open(args.samples, "w") as f:
                    f.write("proxy,seconds,vmrss_bytes,fds\n")
                    for name, ss in samples.items():
                        for t, rss, fds in ss:
                            f.write(f"{name},{t:.2f},{rss},{fds}\n")
            for p in proxies:
                if p.proc.poll() is not None:
                    problems.append(f"the {p.name} proxy exited ({p.proc.returncode})")
        finally:
            for p in proxies:
                p.stop()
            app.shutdown()
        if problems:
            print("soak: FAIL")
            for pr in problems:
                print(f"  - {pr}")
            return 1
        print("soak: OK (no growth beyond noise)")
        return 0


if __name__ == "__main__":
    sys.exit(main())
