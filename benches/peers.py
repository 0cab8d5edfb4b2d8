#!/usr/bin/env python3
"""Peer comparison benchmark: svidcar against haproxy and nginx mTLS pairs, on loopback.

One command:

    python3 benches/peers.py --rounds 3            # about 15 minutes after the build
    python3 benches/peers.py --rounds 1 --quick    # about 2 minutes after the build

Each candidate is a pair of proxies, load generator -> client-side proxy (plaintext) -> mTLS
(TLS 1.3, client certificate required, both chains checked against a bench CA) -> server-side
proxy -> backend (nginx with a small static file, or `iperf3 -s` for bulk). The candidates take
turns within each round; the table shows the median and the range over the rounds. What each
figure means, the methodology and the caveats: docs/benchmarks.md.

Needs Python 3.9+ (standard library only), the Debian packages haproxy, nginx-light (plus
libnginx-mod-stream), wrk, iperf3, nghttp2-client (h2load), openssl and curl (installed when
missing: by apt-get as root, else after asking), and cargo unless `--svidcar PATH` is given.
Proxy configurations are templates in benches/peers/; the svidcar ones are built in
`svidcar_configs` below, the only place that knows svidcar's configuration keys.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TEMPLATES = HERE / "peers"

TRUST_DOMAIN = "bench.test"
CLIENT_ID = f"spiffe://{TRUST_DOMAIN}/client"
SERVER_ID = f"spiffe://{TRUST_DOMAIN}/server"
# Both leaves also carry a DNS SAN (allowed by the X509-SVID spec): nginx cannot verify a peer
# without checking a name, so both peers check this one; svidcar checks the SPIFFE ID instead.
SERVER_DNS = f"server.{TRUST_DOMAIN}"
CLIENT_DNS = f"client.{TRUST_DOMAIN}"

# The body every HTTP figure fetches (GET /): small, static, checked once per pair.
BODY = (b"svidcar peer benchmark: a small static body served by nginx over keep-alive."
        b" Every request fetches it.\n")

CLK_TCK = os.sysconf("SC_CLK_TCK")
# In the fixed-rate run, a connection still unanswered after this long counts as failed.
FIXED_RATE_TIMEOUT_S = 10

# --------------------------------------------------------------------------------------------
# svidcar configuration: every key the harness writes is here.
# --------------------------------------------------------------------------------------------


def svidcar_configs(mode, ports, pki, opts, features):
    """The client- and server-side svidcar configurations (dicts written as YAML flow/JSON).

    mode: "direct" (one mTLS connection per app connection), "pooled" (HTTP requests ride
    pooled mTLS HTTP/2 connections to the peer's tunnel listener as requests of their own) or
    "tcp" (pooled, with HTTP awareness off on both sides: every app connection rides a CONNECT
    stream as opaque bytes).
    ports: dict with listen (client-side app port), inbound (server-side mTLS listener),
    app (backend), admin_client, admin_server, tunnel (server-side tunnel listener).
    features: what this binary accepted (see SvidcarPair.start).
    """
    identity = lambda side: {  # noqa: E731
        "source": "files",
        "cert": str(pki[f"{side}_crt"]),
        "key": str(pki[f"{side}_key"]),
        "bundle": str(pki["ca_crt"]),
    }
    limits = {"drain_grace": "1s"}
    route = {
        "listen": f"127.0.0.1:{ports['listen']}",
        "upstream": f"127.0.0.1:{ports['inbound']}",
        "server_id": SERVER_ID,
    }
    client = {
        "identity": identity("client"),
        "outbound": {"mode": "explicit", "routes": [route]},
        "inbound": {"enabled": False},
        "admin": {"listen": f"127.0.0.1:{ports['admin_client']}"},
        "limits": limits,
    }
    server = {
        "identity": identity("server"),
        "outbound": {"enabled": False},
        "inbound": {
            "mode": "explicit",
            "listen": f"127.0.0.1:{ports['inbound']}",
            "app": f"127.0.0.1:{ports['app']}",
        },
        "admin": {"listen": f"127.0.0.1:{ports['admin_server']}"},
        # An explicit ALLOW for the client (policy dir), everything else denied.
        "policy": {"dir": str(pki["policy_dir"]), "default": "deny"},
        "limits": limits,
    }
    # Tunnels (`tunnel:` section, `tunnel:` on a route); `tunnel.enabled` is true by default
    # and an explicit-mode side has no tunnel listener unless given one.
    if mode in ("pooled", "tcp"):
        server["tunnel"] = {"listen": f"127.0.0.1:{ports['tunnel']}"}
        route["tunnel"] = f"127.0.0.1:{ports['tunnel']}"
    elif features.get("tunnel", True):
        client["tunnel"] = {"enabled": False}
        server["tunnel"] = {"enabled": False}
    # Opaque TCP: HTTP awareness off on both sides.
    if mode == "tcp":
        for cfg in (client, server):
            cfg["http"] = {"enabled": False}
    # Worker threads (`runtime.worker_threads`), only with --workers.
    if opts.workers and features.get("worker_threads", True):
        for cfg in (client, server):
            cfg["runtime"] = {"worker_threads": opts.workers}
    return client, server


def svidcar_policy(policy_dir):
    """The server side's policy: an ALLOW for the client's SPIFFE ID."""
    (policy_dir / "allow-bench-client.yaml").write_text(
        "kind: AuthorizationPolicy\n"
        "name: allow-bench-client\n"
        f"selector: [\"{SERVER_ID}\"]\n"
        "action: ALLOW\n"
        "rules:\n"
        f"  - from: [{{ principals: [\"{CLIENT_ID}\"] }}]\n"
    )


def svidcar_argv(binary, config_path, opts):
    return [str(binary), "--log", opts.svidcar_log, "--log-format", "text", "run",
            "--config", str(config_path)]


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------

VERBOSE = True


def say(msg):
    if VERBOSE:
        print(f"[peers] {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    """A failure the run cannot go on from; the message names what failed."""


class ConfigRejected(BenchError):
    """svidcar refused its configuration (e.g. a key this build does not know)."""


_used_ports: set[int] = set()


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on now and that this run has not handed out."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _used_ports:
            _used_ports.add(port)
            return port
    raise BenchError("could not find a free loopback port")


def render(template, out_path, **fields):
    text = (TEMPLATES / template).read_text()
    for key, value in fields.items():
        text = text.replace("{{" + key + "}}", str(value))
    left = re.findall(r"\{\{[A-Z_]+\}\}", text)
    if left:
        raise BenchError(f"template {template}: unfilled fields {sorted(set(left))}")
    out_path.write_text(text)
    return out_path


def run(argv, timeout, check=True, what=None, **kw):
    """Runs a command to completion (bounded by `timeout`), returns CompletedProcess."""
    try:
        cp = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, timeout=timeout, text=True, **kw)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{what or argv[0]}: no result within {timeout:.0f} s: "
                         f"{shlex.join(map(str, argv))}") from None
    if check and cp.returncode != 0:
        raise BenchError(f"{what or argv[0]} failed (exit {cp.returncode}): "
                         f"{shlex.join(map(str, argv))}\n{(cp.stderr or cp.stdout).strip()[-2000:]}")
    return cp


def first_line(argv):
    try:
        cp = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, timeout=10, text=True)
        return (cp.stdout.strip().splitlines() or [""])[0]
    except (OSError, subprocess.TimeoutExpired):
        return ""


# --------------------------------------------------------------------------------------------
# Processes: every long-running process is in its own process group, stopped as a group.
# --------------------------------------------------------------------------------------------


def _stat_fields(pid):
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    # Fields after the command name (which may contain spaces), starting with field 3 (state).
    return stat[stat.rindex(")") + 2:].split()


def group_pids(pgid):
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if int(_stat_fields(entry)[2]) == pgid:
                pids.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return pids


class Proc:
    """A long-running process we started (proxy or backend), in its own process group."""

    registry: list["Proc"] = []

    def __init__(self, name, argv, log_path, cwd=None):
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "wb")
        try:
            self.popen = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, cwd=cwd,
                                          start_new_session=True)
        except OSError as e:
            self._log.close()
            raise BenchError(f"{name}: cannot start {self.argv[0]}: {e}") from None
        self.pgid = self.popen.pid
        Proc.registry.append(self)

    def alive(self):
        return self.popen.poll() is None

    def pids(self):
        return group_pids(self.pgid)

    def cpu_ticks(self):
        total = 0
        for pid in self.pids():
            try:
                f = _stat_fields(pid)
                total += int(f[11]) + int(f[12])  # utime, stime
            except (OSError, ValueError, IndexError):
                pass
        return total

    def mem_kib(self, field):
        """Sum over the group of a /proc/PID/status field (VmRSS, VmHWM), in KiB."""
        total = 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith(field + ":"):
                            total += int(line.split()[1])
            except (OSError, ValueError):
                pass
        return total

    def tail(self, lines=15):
        try:
            self._log.flush()
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def stop(self, grace=3.0):
        """SIGTERM to the group, SIGKILL after `grace` seconds; reaps the leader."""
        if self.pids():
            try:
                os.killpg(self.pgid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                self.popen.poll()
                if not self.pids():
                    break
                time.sleep(0.05)
        if self.pids():
            try:
                os.killpg(self.pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        if not self._log.closed:
            self._log.close()
        if self in Proc.registry:
            Proc.registry.remove(self)

    @classmethod
    def stop_all(cls):
        for p in list(reversed(cls.registry)):
            try:
                p.stop(grace=1.0)
            except Exception:  # noqa: BLE001 - cleanup must go on
                pass


def listening(port):
    """Whether a TCP socket listens on 127.0.0.1:port or 0.0.0.0:port (from /proc/net/tcp).

    Read from the kernel rather than by connecting: a test connection through a pair would
    reach the backend, and iperf3's server takes any connection for a test's control channel.
    """
    wanted = {f"0100007F:{port:04X}", f"00000000:{port:04X}"}
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                cols = line.split()
                if cols[3] == "0A" and cols[1] in wanted:
                    return True
    except OSError:
        pass
    return False


def wait_port(port, proc, timeout=15.0, what=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise BenchError(f"{what or proc.name} exited (code {proc.popen.returncode}) "
                             f"before listening on 127.0.0.1:{port}; its log:\n{proc.tail()}")
        if listening(port):
            return
        time.sleep(0.05)
    raise BenchError(f"{what or proc.name}: nothing listens on 127.0.0.1:{port} after "
                     f"{timeout:.0f} s; its log:\n{proc.tail()}")


def http_get(url, timeout=2.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - loopback only
        return r.status, r.read()


# --------------------------------------------------------------------------------------------
# Setup: packages, svidcar binary, certificates, backends
# --------------------------------------------------------------------------------------------

TOOLS = {  # command -> Debian package
    "haproxy": "haproxy",
    "nginx": "nginx-light",
    "wrk": "wrk",
    "iperf3": "iperf3",
    "h2load": "nghttp2-client",
    "openssl": "openssl",
    "curl": "curl",
}


def tool(cmd):
    """The path of a command, also found in /usr/sbin and /sbin when they are not on PATH."""
    found = shutil.which(cmd)
    if found:
        return found
    for d in ("/usr/sbin", "/sbin", "/usr/local/sbin"):
        if os.access(Path(d, cmd), os.X_OK):
            return str(Path(d, cmd))
    return None


def nginx_stream_module():
    """(load_module line or '', missing package or None) for nginx's stream module."""
    nginx = tool("nginx") or "nginx"
    try:
        cp = subprocess.run([nginx, "-V"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, timeout=10)
        conf = cp.stdout
    except (OSError, subprocess.TimeoutExpired):
        return "", None
    if re.search(r"--with-stream(\s|$)", conf):
        return "", None  # built in
    m = re.search(r"--modules-path=(\S+)", conf)
    module = Path(m.group(1) if m else "/usr/lib/nginx/modules") / "ngx_stream_module.so"
    if module.exists():
        return f"load_module {module};", None
    return "", "libnginx-mod-stream"


def ensure_packages(opts):
    missing = sorted({pkg for cmd, pkg in TOOLS.items() if not tool(cmd)})
    if tool("nginx"):
        _, stream_pkg = nginx_stream_module()
        if stream_pkg:
            missing.append(stream_pkg)
    elif "nginx-light" in missing:
        missing.append("libnginx-mod-stream")
    if not missing:
        return
    install = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    if opts.no_install:
        raise BenchError(f"missing packages: {' '.join(missing)}; install them with: "
                         f"sudo {shlex.join(install)}")
    if os.geteuid() != 0:
        if not sys.stdin.isatty():
            raise BenchError(f"missing packages: {' '.join(missing)}; run: "
                             f"sudo {shlex.join(install)}")
        answer = input(f"Missing packages: {' '.join(missing)}. Run `sudo {shlex.join(install)}` "
                       "now? [y/N] ").strip().lower()
        if answer not in ("y", "yes"):
            raise BenchError("missing packages, not installed")
        install = ["sudo", *install]
        update = ["sudo", "apt-get", "update"]
    else:
        update = ["apt-get", "update"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    say(f"installing {' '.join(missing)}")
    if subprocess.run(install, env=env).returncode != 0:
        subprocess.run(update, env=env, check=False)
        if subprocess.run(install, env=env).returncode != 0:
            raise BenchError(f"could not install {' '.join(missing)}")


def build_svidcar():
    """The sidecar binary as shipped: `svidcar-proxy` in the `sidecar` profile (fat LTO)."""
    cmd = "cargo build --profile sidecar --locked -p svidcar-sidecar --bin svidcar-proxy"
    say(f"building the sidecar binary ({cmd}; about 10 min from scratch on 2 cores)")
    argv = cmd.split() + ["--message-format=json-render-diagnostics"]
    try:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, text=True)
    except OSError as e:
        raise BenchError(f"cannot run cargo ({e}); build elsewhere and pass --svidcar PATH") from None
    exe = None
    assert proc.stdout is not None
    for line in proc.stdout:
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if msg.get("reason") == "compiler-artifact" and msg.get("executable") \
                and msg.get("target", {}).get("name") == "svidcar-proxy":
            exe = msg["executable"]
    if proc.wait() != 0 or not exe:
        raise BenchError(f"{cmd} failed (see above)")
    return Path(exe)


def make_pki(d: Path):
    """A root CA and two ECDSA P-256 leaf X.509-SVIDs (client and server), valid for a day."""
    d.mkdir(mode=0o700)
    (d / "ca.cnf").write_text(
        "[req]\ndistinguished_name = dn\nprompt = no\n"
        "[dn]\nO = svidcar bench\nCN = bench.test root CA\n"
        "[v3_ca]\nbasicConstraints = critical, CA:TRUE\n"
        "keyUsage = critical, keyCertSign, cRLSign\n"
        "subjectKeyIdentifier = hash\n"
        f"subjectAltName = URI:spiffe://{TRUST_DOMAIN}\n"
    )
    ossl = "openssl"
    run([ossl, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-out", d / "ca.key"], 30, what="openssl (CA key)")
    run([ossl, "req", "-x509", "-new", "-key", d / "ca.key", "-sha256", "-days", "1",
         "-config", d / "ca.cnf", "-extensions", "v3_ca", "-out", d / "ca.crt"], 30,
        what="openssl (CA certificate)")
    pki = {"dir": d, "ca_crt": d / "ca.crt"}
    for side, spiffe_id, dns in (("client", CLIENT_ID, CLIENT_DNS),
                                 ("server", SERVER_ID, SERVER_DNS)):
        (d / f"{side}.cnf").write_text(
            "[req]\ndistinguished_name = dn\nprompt = no\n"
            f"[dn]\nO = svidcar bench\n"
            "[leaf]\nbasicConstraints = critical, CA:FALSE\n"
            "keyUsage = critical, digitalSignature\n"
            "extendedKeyUsage = clientAuth, serverAuth\n"
            "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n"
            f"subjectAltName = URI:{spiffe_id}, DNS:{dns}\n"
        )
        key, csr, crt = d / f"{side}.key", d / f"{side}.csr", d / f"{side}.crt"
        run([ossl, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", key], 30, what=f"openssl ({side} key)")
        run([ossl, "req", "-new", "-key", key, "-config", d / f"{side}.cnf", "-out", csr], 30,
            what=f"openssl ({side} CSR)")
        run([ossl, "x509", "-req", "-in", csr, "-CA", d / "ca.crt", "-CAkey", d / "ca.key",
             "-set_serial", "0x" + os.urandom(12).hex(), "-days", "1", "-sha256",
             "-extfile", d / f"{side}.cnf", "-extensions", "leaf", "-out", crt], 30,
            what=f"openssl ({side} certificate)")
        pem = d / f"{side}.pem"  # haproxy wants certificate and key in one file
        pem.write_text(crt.read_text() + key.read_text())
        pki[f"{side}_crt"], pki[f"{side}_key"], pki[f"{side}_pem"] = crt, key, pem
    policy_dir = d / "policy"
    policy_dir.mkdir()
    svidcar_policy(policy_dir)
    pki["policy_dir"] = policy_dir
    return pki


class Backends:
    """nginx (1 worker, static files, keep-alive) and `iperf3 -s`, shared by every candidate."""

    def __init__(self, tmp: Path, opts):
        www = tmp / "www"
        www.mkdir()
        (www / "index.html").write_bytes(BODY)
        with open(www / "big.bin", "wb") as f:  # sparse; served from the page cache
            f.truncate(opts.download_mb << 20)
        # nginx workers run as nobody when started by root: the files must be readable.
        os.chmod(tmp, 0o711)
        os.chmod(www, 0o755)
        for f in www.iterdir():
            os.chmod(f, 0o644)
        ntmp = tmp / "nginx-backend"
        ntmp.mkdir()
        self.http_port = free_port()
        conf = render("backend-nginx.conf", tmp / "backend-nginx.conf", PIDFILE=ntmp / "nginx.pid",
                      ERRLOG=ntmp / "error.log", TMP=ntmp, LISTEN=self.http_port, WWW=www)
        self.nginx = Proc("backend nginx", [tool("nginx"), "-e", ntmp / "error.log", "-p", ntmp,
                                            "-c", conf], tmp / "backend-nginx.log")
        wait_port(self.http_port, self.nginx)
        if opts.download_mb:
            # The first read of the (sparse) file fills the page cache and is several times
            # slower than the next ones: do it here, not in the first candidate's figure.
            try:
                http_download(self.http_port)
            except OSError as e:
                raise BenchError(f"backend nginx: warming the download file: {e}") from None
        self.bulk_port = free_port()
        self.iperf = Proc("backend iperf3", [tool("iperf3"), "-s", "-B", "127.0.0.1", "-p",
                                             self.bulk_port], tmp / "backend-iperf3.log")
        wait_port(self.bulk_port, self.iperf)

    def check(self):
        for p in (self.nginx, self.iperf):
            if not p.alive():
                raise BenchError(f"{p.name} died; its log:\n{p.tail()}")


# --------------------------------------------------------------------------------------------
# Candidates
# --------------------------------------------------------------------------------------------


class Pair:
    """One running candidate: where the load generator connects, and the proxy processes."""

    def __init__(self, entry_port, procs):
        self.entry_port = entry_port
        self.procs = procs  # [client side, server side]; empty for `direct`

    def cpu_ticks(self):
        return sum(p.cpu_ticks() for p in self.procs)

    def mem_kib(self, field):
        return sum(p.mem_kib(field) for p in self.procs)

    def check(self, name):
        for p in self.procs:
            if not p.alive():
                raise BenchError(f"{name}: {p.name} died (code {p.popen.returncode}); "
                                 f"its log:\n{p.tail()}")

    def stop(self):
        for p in self.procs:
            p.stop()


class Candidate:
    key = ""
    label = ""
    is_peer = False  # counts for "best peer"
    http_only = False  # no opaque TCP (no iperf3)

    def __init__(self, env):
        self.env = env
        self.skipped = None  # reason, when skipped
        self.notes = []

    def start(self, backend_port, tag) -> Pair:
        raise NotImplementedError

    def workdir(self, tag):
        d = self.env.tmp / f"{self.key}-{tag}"
        d.mkdir(exist_ok=True)
        return d


class Direct(Candidate):
    key, label = "direct", "direct"

    def start(self, backend_port, tag):
        return Pair(backend_port, [])


class HaproxyPair(Candidate):
    is_peer = True

    def __init__(self, env, h2):
        super().__init__(env)
        self.h2 = h2
        self.key = "haproxy-h2" if h2 else "haproxy"
        self.label = "haproxy h2-pooled" if h2 else "haproxy"
        self.http_only = h2

    def start(self, backend_port, tag):
        d, pki, o = self.workdir(tag), self.env.pki, self.env.opts
        listen, inbound = free_port(), free_port()
        kind = "h2" if self.h2 else "tcp"
        common = dict(THREADS=o.peer_workers, CA=pki["ca_crt"],
                      SSL_CACHESIZE=20000 if o.peer_resumption else 0)
        server_cfg = render(f"haproxy-{kind}-server.cfg", d / "server.cfg", LISTEN=inbound,
                            APP=backend_port, SERVER_PEM=pki["server_pem"],
                            BIND_TICKETS="" if o.peer_resumption else "no-tls-tickets", **common)
        client_cfg = render(f"haproxy-{kind}-client.cfg", d / "client.cfg", LISTEN=listen,
                            UPSTREAM=inbound, CLIENT_PEM=pki["client_pem"],
                            SSL_REUSE="" if o.peer_resumption else "no-ssl-reuse", **common)
        procs = []
        try:
            for side, cfg, port in (("server", server_cfg, inbound), ("client", client_cfg, listen)):
                p = Proc(f"{self.label} {side}-side", [tool("haproxy"), "-db", "-f", cfg],
                         d / f"{side}.log")
                procs.append(p)
                wait_port(port, p)
        except BaseException:
            for p in procs:
                p.stop()
            raise
        return Pair(listen, procs[::-1])


class NginxStreamPair(Candidate):
    key, label, is_peer = "nginx", "nginx stream", True

    def start(self, backend_port, tag):
        d, pki, o = self.workdir(tag), self.env.pki, self.env.opts
        listen, inbound = free_port(), free_port()
        load = self.env.nginx_load_stream
        procs = []
        try:
            for side, port in (("server", inbound), ("client", listen)):
                sd = d / side
                sd.mkdir(exist_ok=True)
                fields = dict(LOAD_STREAM=load, WORKERS=o.peer_workers, PIDFILE=sd / "nginx.pid",
                              ERRLOG=sd / "error.log", CA=pki["ca_crt"])
                if side == "server":
                    cfg = render("nginx-stream-server.conf", sd / "nginx.conf", LISTEN=inbound,
                                 APP=backend_port, SERVER_CRT=pki["server_crt"],
                                 SERVER_KEY=pki["server_key"],
                                 SESSION_TICKETS="on" if o.peer_resumption else "off", **fields)
                else:
                    cfg = render("nginx-stream-client.conf", sd / "nginx.conf", LISTEN=listen,
                                 UPSTREAM=inbound, CLIENT_CRT=pki["client_crt"],
                                 CLIENT_KEY=pki["client_key"],
                                 SESSION_REUSE="on" if o.peer_resumption else "off", **fields)
                p = Proc(f"{self.label} {side}-side",
                         [tool("nginx"), "-e", sd / "error.log", "-p", sd, "-c", cfg], d / f"{side}.log")
                procs.append(p)
                wait_port(port, p)
        except BaseException:
            for p in procs:
                p.stop()
            raise
        return Pair(listen, procs[::-1])


class SvidcarPair(Candidate):
    def __init__(self, env, mode):
        super().__init__(env)
        self.mode = mode
        self.key = f"svidcar-{mode}"
        self.label = "svidcar pooled, opaque TCP" if mode == "tcp" else f"svidcar {mode}"
        # Optional keys this binary turned out not to know ({"tunnel": False, ...}), shared by
        # both svidcar candidates; an absent key is assumed known until svidcar says otherwise.
        self.features = env.svidcar_features

    def _start_once(self, backend_port, tag):
        d, o = self.workdir(tag), self.env.opts
        ports = {k: free_port() for k in ("listen", "inbound", "admin_client", "admin_server",
                                          "tunnel")}
        ports["app"] = backend_port
        client, server = svidcar_configs(self.mode, ports, self.env.pki, o, self.features)
        procs = []
        try:
            for side, cfg, port, admin in (("server", server, ports["inbound"], ports["admin_server"]),
                                           ("client", client, ports["listen"], ports["admin_client"])):
                path = d / f"{side}.yaml"
                path.write_text(json.dumps(cfg, indent=2) + "\n")  # JSON is YAML
                p = Proc(f"{self.label} {side}-side", svidcar_argv(self.env.svidcar, path, o),
                         d / f"{side}.log")
                procs.append(p)
                self._wait_ready(p, admin, port)
        except BaseException:
            for p in procs:
                p.stop()
            raise
        pair = Pair(ports["listen"], procs[::-1])
        pair.tunnel_port = ports["tunnel"] if self.mode in ("pooled", "tcp") else None
        return pair

    def _wait_ready(self, proc, admin_port, port, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not proc.alive():
                log = proc.tail(30)
                if re.search(r"unknown field|unknown variant|invalid type", log):
                    raise ConfigRejected(f"{proc.name}: svidcar rejected its configuration:\n{log}")
                raise BenchError(f"{proc.name} exited (code {proc.popen.returncode}); "
                                 f"its log:\n{log}")
            try:
                status, _ = http_get(f"http://127.0.0.1:{admin_port}/ready", timeout=0.5)
                if status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.05)
        else:
            raise BenchError(f"{proc.name}: not ready (admin /ready) after {timeout:.0f} s; "
                             f"its log:\n{proc.tail()}")
        wait_port(port, proc, timeout=5.0)

    def start(self, backend_port, tag):
        """Starts the pair; on the first start, learns which optional keys this build has."""
        f = self.features
        while True:
            try:
                return self._start_once(backend_port, tag)
            except ConfigRejected as e:
                text = str(e)
                if self.mode == "direct" and "unknown field `tunnel`" in text and "tunnel" not in f:
                    f["tunnel"] = False
                    self.env.note("this svidcar build has no `tunnel` section: `svidcar direct` "
                                  "runs without it (its only mode)")
                    continue
                if self.env.opts.workers and "worker_threads" not in f and (
                        "unknown field `runtime`" in text
                        or "unknown field `worker_threads`" in text):
                    f["worker_threads"] = False
                    self.env.note(f"this svidcar build has no `runtime.worker_threads`: "
                                  f"--workers {self.env.opts.workers} not applied")
                    continue
                raise


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out):
    r = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m:
        raise ValueError("no Requests/sec line")
    r["rps"] = float(m.group(1))
    m = re.search(r"(\d+) requests in ([\d.]+\w+),", out)
    r["requests"] = int(m.group(1)) if m else 0
    r["seconds"] = _ms(m.group(2)) / 1e3 if m else 0.0
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+\w+)\s*$", out, re.M)
        if m:
            r[f"p{pct}_ms"] = _ms(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    r["socket_errors"] = sum(map(int, m.groups())) if m else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    r["non_2xx"] = int(m.group(1)) if m else 0
    return r


class Runner:
    """The measurements of one candidate in one round."""

    def __init__(self, env):
        self.env = env
        self.o = env.opts

    def verify(self, cand, pair):
        cp = run(["curl", "-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}",
                  f"http://127.0.0.1:{pair.entry_port}/"], 20, check=False, what="curl")
        body, _, code = cp.stdout.rpartition("\n")
        if cp.returncode != 0 or code != "200" or body.encode() != BODY:
            logs = "\n".join(f"--- {p.name} ({p.log_path}):\n{p.tail() or '(empty)'}"
                             for p in pair.procs)
            if isinstance(cand, SvidcarPair) and self.o.svidcar_log == "warn":
                logs += ("\n(svidcar logs each refused connection at info level: "
                         "--svidcar-log info --keep-temp shows why)")
            raise BenchError(f"{cand.label}: the check request through the pair failed "
                             f"(curl exit {cp.returncode}, HTTP {code or '-'}"
                             f"{', wrong body' if code == '200' else ''}): "
                             f"{cp.stderr.strip()}\n{logs}")
        if getattr(pair, "tunnel_port", None) and not tcp_established_to(pair.tunnel_port):
            # svidcar falls back to a direct mTLS connection when a tunnel cannot be used:
            # measuring that as "pooled" would mislead.
            logs = "\n".join(f"--- {p.name} ({p.log_path}):\n{p.tail()}" for p in pair.procs)
            raise BenchError(f"{cand.label}: the check request worked but no connection to the "
                             f"server's tunnel listener (127.0.0.1:{pair.tunnel_port}) exists: "
                             f"the route did not use the tunnel\n{logs}")

    def wrk(self, port, seconds, close, what):
        argv = ["wrk", "-c", str(self.o.connections), "-t", str(self.o.threads),
                "-d", f"{seconds}s", "--latency", "--timeout", "5s"]
        if close:
            argv += ["-H", "Connection: close"]
        argv.append(f"http://127.0.0.1:{port}/")
        cp = run(argv, seconds + 30, what=what)
        try:
            r = parse_wrk(cp.stdout)
        except ValueError as e:
            raise BenchError(f"{what}: cannot read wrk's output ({e}):\n{cp.stdout}") from None
        if r["requests"] == 0:
            raise BenchError(f"{what}: wrk completed no request:\n{cp.stdout}")
        return r

    def fixed_rate(self, port, what):
        """p99 at a fixed rate of new connections (one request each), open loop, by h2load."""
        rate, secs = self.o.rate, self.o.rate_duration
        n = max(1, int(rate * secs))
        per_period = max(1, round(rate * 0.002))  # a few connections every ~2 ms
        period_ms = per_period * 1000.0 / rate
        log = self.env.tmp / "h2load.log"
        log.unlink(missing_ok=True)  # h2load appends
        # -T bounds each connection's life, so an overloaded pair ends the run in time: its
        # unanswered requests count as failed, i.e. as slower than any answered one.
        argv = ["h2load", "--h1", "-t", "1", "-n", str(n), "-c", str(n), "-r", str(per_period),
                "--rate-period", f"{period_ms:g}ms", "-T", f"{FIXED_RATE_TIMEOUT_S}s",
                "--log-file", str(log), f"http://127.0.0.1:{port}/"]
        cp = run(argv, secs * 2 + FIXED_RATE_TIMEOUT_S + 30, check=False, what=what)
        if not log.exists():
            raise BenchError(f"{what}: h2load failed (exit {cp.returncode}):\n"
                             f"{(cp.stdout + cp.stderr)[-1500:]}")
        lat, starts, ok = [], [], 0
        for line in log.read_text().splitlines():
            parts = line.split()
            if len(parts) != 3:
                continue
            starts.append(int(parts[0]))
            if parts[1] == "200":
                ok += 1
                lat.append(int(parts[2]) / 1e3)
        if not lat:
            raise BenchError(f"{what}: no successful request:\n{cp.stdout[-1500:]}")
        lat.sort()
        lat += [float("inf")] * (n - ok)  # failed: slower than everything answered
        span = (max(starts) - min(starts)) / 1e6 if len(starts) > 1 else 0.0
        p99, p50 = percentile(lat, 99), percentile(lat, 50)
        return {"p99_ms": p99 if p99 != float("inf") else None,
                "p50_ms": p50 if p50 != float("inf") else None,
                "overloaded": p99 == float("inf"),
                "requests": n, "succeeded": ok, "errors": n - ok,
                "achieved_rate": (len(starts) - 1) / span if span > 0 else 0.0}

    def iperf(self, port, what):
        secs = self.o.bulk_seconds
        argv = ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(secs), "-J",
                "--connect-timeout", "5000"]
        cp = run(argv, secs + 40, check=False, what=what)
        try:
            data = json.loads(cp.stdout)
        except ValueError:
            raise BenchError(f"{what}: iperf3 gave no JSON (exit {cp.returncode}): "
                             f"{(cp.stderr or cp.stdout).strip()[-1500:]}") from None
        if data.get("error") or cp.returncode != 0:
            raise BenchError(f"{what}: iperf3 failed: {data.get('error') or cp.stderr.strip()}")
        recv = data["end"]["sum_received"]
        return {"gbps": recv["bits_per_second"] / 1e9, "bytes": recv["bytes"],
                "seconds": recv["seconds"]}

    def download(self, port, what):
        want = self.o.download_mb << 20
        try:
            status, got, seconds = http_download(port)
        except (OSError, ValueError, IndexError) as e:
            raise BenchError(f"{what}: {e}") from None
        if status != "200" or got != want:
            raise BenchError(f"{what}: HTTP {status}, {got} of {want} bytes")
        return {"gbps": got * 8 / seconds / 1e9, "bytes": got, "seconds": seconds}

    def measure(self, cand, rnd):
        """All figures of `cand` for round `rnd`; returns a dict of raw results."""
        env, o = self.env, self.o
        res = {}
        tag = f"r{rnd}"
        name = cand.label

        # -- HTTP figures: the pair in front of nginx.
        env.backends.check()
        pair = cand.start(env.backends.http_port, tag)
        try:
            self.verify(cand, pair)
            time.sleep(0.5)
            if pair.procs:
                res["idle_rss_kib"] = pair.mem_kib("VmRSS")
            self.wrk(pair.entry_port, 1, False, f"{name}: warm-up")
            t0, c0 = time.monotonic(), pair.cpu_ticks()
            ka = self.wrk(pair.entry_port, o.duration, False, f"{name}: keep-alive wrk")
            if pair.procs:
                ka["cpu_s"] = (pair.cpu_ticks() - c0) / CLK_TCK
                ka["wall_s"] = time.monotonic() - t0
            res["keepalive"] = ka
            pair.check(name)
            time.sleep(0.3)
            t0, c0 = time.monotonic(), pair.cpu_ticks()
            nc = self.wrk(pair.entry_port, o.duration, True, f"{name}: new-connection wrk")
            if pair.procs:
                nc["cpu_s"] = (pair.cpu_ticks() - c0) / CLK_TCK
                nc["wall_s"] = time.monotonic() - t0
            res["newconn"] = nc
            pair.check(name)
            time.sleep(0.3)
            res["fixed_rate"] = self.fixed_rate(pair.entry_port, f"{name}: fixed-rate h2load")
            pair.check(name)
            if o.download_mb:
                res["download"] = self.download(pair.entry_port, f"{name}: HTTP download")
                pair.check(name)
            if pair.procs:
                res["peak_rss_kib"] = pair.mem_kib("VmHWM")
        finally:
            pair.stop()

        # -- Bulk: the pair in front of iperf3 -s.
        if cand.http_only or o.bulk_seconds <= 0:
            return res
        env.backends.check()
        pair = cand.start(env.backends.bulk_port, tag + "-bulk")
        try:
            t0, c0 = time.monotonic(), pair.cpu_ticks()
            bulk = self.iperf(pair.entry_port, f"{name}: iperf3 bulk")
            if pair.procs:
                bulk["cpu_s"] = (pair.cpu_ticks() - c0) / CLK_TCK
                bulk["wall_s"] = time.monotonic() - t0
            res["bulk"] = bulk
            pair.check(name)
            if pair.procs:
                res["peak_rss_kib"] = max(res.get("peak_rss_kib", 0), pair.mem_kib("VmHWM"))
        finally:
            pair.stop()
        return res


def http_download(port, path="/big.bin"):
    """One HTTP/1.1 GET read with 1 MiB receives (curl's 16 KiB buffer made curl itself the
    bottleneck on loopback). Returns (status, body bytes, seconds from request to last byte)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        t0 = time.perf_counter()
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench.test\r\nConnection: close\r\n\r\n"
                  .encode())
        view = memoryview(bytearray(1 << 20))
        head = b""
        while b"\r\n\r\n" not in head:
            n = s.recv_into(view)
            if not n:
                raise OSError("closed before the response head")
            head += bytes(view[:n])
            if len(head) > 65536 and b"\r\n\r\n" not in head:
                raise OSError("response head too long")
        head, _, rest = head.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = lines[0].split(" ", 2)[1] if " " in lines[0] else lines[0]
        length = next((int(line.split(":", 1)[1]) for line in lines[1:]
                       if line.lower().startswith("content-length:")), None)
        got = len(rest)
        while length is None or got < length:
            n = s.recv_into(view)
            if not n:
                break
            got += n
        return status, got, time.perf_counter() - t0


def tcp_established_to(port):
    """Whether an established TCP connection to 127.0.0.1:port exists (from /proc/net/tcp)."""
    want = f"0100007F:{port:04X}"
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                cols = line.split()
                if cols[3] == "01" and (cols[1] == want or cols[2] == want):
                    return True
    except OSError:
        pass
    return False


def config_error_line(text):
    """The line of a svidcar log that says what was wrong with its configuration."""
    for line in text.splitlines():
        if re.search(r"unknown field|unknown variant|invalid type", line):
            return line.strip()
    return text.strip().splitlines()[-1].strip() if text.strip() else "?"


def machine_busy_s():
    """CPU seconds the whole machine has spent busy (all CPUs, /proc/stat)."""
    with open("/proc/stat") as f:
        cols = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is already in user)
    return (sum(cols[:8]) - cols[3] - cols[4]) / CLK_TCK


def own_cpu_s():
    """CPU seconds of this process and of every child it has reaped (with theirs)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def percentile(sorted_values, pct):
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, int(-(-len(sorted_values) * pct // 100)) - 1))
    return sorted_values[k]


# --------------------------------------------------------------------------------------------
# Figures and the table
# --------------------------------------------------------------------------------------------

# (key, row label, higher is better, extractor from one round's raw results, format)
def _cpu_per_krps(part):
    def f(r):
        x = r.get(part)
        if not x or "cpu_s" not in x or not x.get("requests"):
            return None
        return x["cpu_s"] / x["requests"] * 1000 * 100  # % of a core per 1 000 req/s
    return f


def _cpu_per_gbps(r):
    b = r.get("bulk")
    if not b or "cpu_s" not in b or not b.get("bytes"):
        return None
    return b["cpu_s"] / (b["bytes"] * 8 / 1e9) * 100  # % of a core per Gbit/s


def _get(*path):
    def f(r):
        for p in path:
            if not isinstance(r, dict) or p not in r:
                return None
            r = r[p]
        return r
    return f


FIGURES = [
    ("keepalive_rps", "keep-alive req/s (↑)", True, _get("keepalive", "rps"), "{:,.0f}"),
    ("keepalive_p99", "keep-alive p99 ms (↓)", False, _get("keepalive", "p99_ms"), "num"),
    ("newconn_rps", "new-connection req/s (↑)", True, _get("newconn", "rps"), "{:,.0f}"),
    ("newconn_p99", "new-connection p99 ms (↓)", False, _get("newconn", "p99_ms"), "num"),
    ("fixed_p99", "p99 ms at {rate} new conn/s (↓)", False, _get("fixed_rate", "p99_ms"),
     "num"),
    ("bulk_gbps", "bulk Gbit/s, iperf3 (↑)", True, _get("bulk", "gbps"), "{:.2f}"),
    ("download_gbps", "HTTP download Gbit/s (↑)", True, _get("download", "gbps"), "{:.2f}"),
    ("cpu_keepalive", "CPU % of a core per 1k req/s, keep-alive (↓)", False,
     _cpu_per_krps("keepalive"), "num"),
    ("cpu_newconn", "CPU % of a core per 1k req/s, new connections (↓)", False,
     _cpu_per_krps("newconn"), "num"),
    ("cpu_bulk", "CPU % of a core per Gbit/s, bulk (↓)", False, _cpu_per_gbps, "num"),
    ("idle_rss", "idle RSS MiB, both proxies (↓)", False,
     lambda r: r["idle_rss_kib"] / 1024 if "idle_rss_kib" in r else None, "{:.1f}"),
    ("peak_rss", "peak RSS MiB, both proxies (↓)", False,
     lambda r: r["peak_rss_kib"] / 1024 if "peak_rss_kib" in r else None, "{:.1f}"),
]


def summarize(env, results):
    """{figure key: {candidate key: {median, min, max, values}}}."""
    out = {}
    for key, _, _, get, _ in FIGURES:
        row = {}
        for cand in env.candidates:
            vals = [v for v in (get(r) for r in results.get(cand.key, [])) if v is not None]
            if vals:
                row[cand.key] = {"median": statistics.median(vals), "min": min(vals),
                                 "max": max(vals), "values": vals}
        out[key] = row
    return out


def _fmt(fmt, v):
    if fmt == "num":  # latency and CPU: about three significant digits, never an exponent
        fmt = ("{:,.0f}" if v >= 100 else "{:.1f}" if v >= 10 else "{:.2f}" if v >= 1
               else "{:.3f}")
    return fmt.format(v).replace(",", "\u202f")  # narrow no-break space between thousands


def table(env, summary):
    cands = env.candidates
    ratio_cols = [c for c in cands if isinstance(c, SvidcarPair)]
    head = ["figure"] + [c.label for c in cands] + [f"{c.label} ÷ best peer" for c in ratio_cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, label, higher, _, fmt in FIGURES:
        row = summary.get(key, {})
        if not row:
            continue
        cells = [label.format(rate=_fmt("{:,.0f}", env.opts.rate))]
        for c in cands:
            s = row.get(c.key)
            if c.skipped:
                cells.append("skipped")
            elif s is None and key == "fixed_p99" and any(
                    r.get("fixed_rate", {}).get("overloaded") for r in env.results.get(c.key, [])):
                cells.append(f"overloaded (> {FIXED_RATE_TIMEOUT_S} s)")
            elif s is None:
                cells.append("n/a" if c.key != "direct" else "—")
            elif s["min"] == s["max"]:
                cells.append(_fmt(fmt, s["median"]))
            else:
                cells.append(f"{_fmt(fmt, s['median'])} ({_fmt(fmt, s['min'])}–{_fmt(fmt, s['max'])})")
        peers = [row[c.key]["median"] for c in cands if c.is_peer and not c.skipped and c.key in row]
        best = (max(peers) if higher else min(peers)) if peers else None
        for c in ratio_cols:
            s = row.get(c.key)
            if c.skipped or s is None or not best:
                cells.append("—")
            else:
                cells.append(f"{s['median'] / best:.2f}×")
        lines.append("| " + " | ".join(cells) + " |")
    # Opaque TCP through tunnels is judged against the direct path (no peer pools TCP).
    row = summary.get("newconn_rps", {})
    tcp, direct = row.get("svidcar-tcp"), row.get("direct")
    if tcp and direct and direct["median"]:
        lines.append("")
        lines.append(f"Opaque TCP new connections through tunnels: "
                     f"{tcp['median'] / direct['median']:.2f}× direct "
                     f"({_fmt('{:,.0f}', tcp['median'])} vs {_fmt('{:,.0f}', direct['median'])} "
                     f"connections/s, medians).")
    return "\n".join(lines)


def warnings_for(env, results):
    out = []
    for cand in env.candidates:
        for i, r in enumerate(results.get(cand.key, []), 1):
            for part in ("keepalive", "newconn"):
                x = r.get(part)
                if x and (x["socket_errors"] or x["non_2xx"]):
                    out.append(f"{cand.label}, round {i}, {part}: {x['socket_errors']} socket "
                               f"errors, {x['non_2xx']} non-2xx responses (wrk)")
            fr = r.get("fixed_rate")
            if fr:
                if fr["overloaded"]:
                    out.append(f"{cand.label}, round {i}, fixed rate: overloaded, "
                               f"{fr['errors']} of {fr['requests']} requests unanswered within "
                               f"{FIXED_RATE_TIMEOUT_S} s (p99 counted as overloaded)")
                elif fr["errors"]:
                    out.append(f"{cand.label}, round {i}, fixed rate: {fr['errors']} of "
                               f"{fr['requests']} requests failed")
                if abs(fr["achieved_rate"] - env.opts.rate) > 0.1 * env.opts.rate:
                    out.append(f"{cand.label}, round {i}, fixed rate: achieved "
                               f"{fr['achieved_rate']:.0f} conn/s instead of {env.opts.rate}")
    return out


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


class Env:
    def __init__(self, opts, tmp):
        self.opts = opts
        self.tmp = tmp
        self.pki = None
        self.backends = None
        self.svidcar = None
        self.svidcar_features = {}
        self.nginx_load_stream = ""
        self.candidates = []
        self.notes = []
        self.results = {}
        self.other_load = None

    def note(self, text):
        if text not in self.notes:
            self.notes.append(text)
            say("note: " + text)


ALL_CANDIDATES = ["direct", "haproxy", "nginx", "haproxy-h2", "svidcar-direct", "svidcar-pooled",
                  "svidcar-tcp"]


def make_candidates(env, keys):
    made = []
    for k in keys:
        if k == "direct":
            made.append(Direct(env))
        elif k == "haproxy":
            made.append(HaproxyPair(env, h2=False))
        elif k == "haproxy-h2":
            made.append(HaproxyPair(env, h2=True))
        elif k == "nginx":
            made.append(NginxStreamPair(env))
        elif k == "svidcar-direct":
            made.append(SvidcarPair(env, "direct"))
        elif k == "svidcar-pooled":
            made.append(SvidcarPair(env, "pooled"))
        elif k == "svidcar-tcp":
            made.append(SvidcarPair(env, "tcp"))
        else:
            raise BenchError(f"unknown candidate {k!r}; known: {', '.join(ALL_CANDIDATES)}")
    return made


def versions(env):
    v = {
        "haproxy": first_line([tool("haproxy") or "haproxy", "-v"]),
        "nginx": first_line([tool("nginx") or "nginx", "-v"]),
        "iperf3": first_line(["iperf3", "--version"]),
        "h2load": first_line(["h2load", "--version"]),
        "wrk": first_line(["wrk", "-v"]),
        "openssl": first_line(["openssl", "version"]),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    if env.svidcar:
        v["svidcar"] = first_line([str(env.svidcar), "--version"])
    try:
        with open("/proc/cpuinfo") as f:
            v["cpu"] = next((line.split(":", 1)[1].strip() for line in f
                             if line.startswith("model name")), "")
    except OSError:
        pass
    return v


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="svidcar vs haproxy/nginx mTLS pairs on loopback (see docs/benchmarks.md).")
    p.add_argument("--rounds", type=int, default=3, help="rounds; candidates take turns (default 3)")
    p.add_argument("--quick", action="store_true",
                   help="short runs: 3 s wrk and fixed-rate runs, 2 s iperf3, 128 MiB download")
    p.add_argument("--svidcar", type=Path,
                   help="a built svidcar-proxy (or svidcar) binary (default: cargo build --profile sidecar)")
    p.add_argument("--candidates", default=",".join(ALL_CANDIDATES),
                   help=f"comma-separated subset of {','.join(ALL_CANDIDATES)}")
    p.add_argument("--duration", type=int, help="seconds per wrk run (default 10, quick 3)")
    p.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    p.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    p.add_argument("--rate", type=int, default=1000,
                   help="new connections per second of the fixed-rate run (default 1000)")
    p.add_argument("--rate-duration", type=int, help="seconds of the fixed-rate run (default 10, quick 3)")
    p.add_argument("--bulk-seconds", type=int, help="iperf3 -t (default 5, quick 2; 0 skips bulk)")
    p.add_argument("--download-mb", type=int,
                   help="MiB of the HTTP download (default 512, quick 128; 0 skips it)")
    p.add_argument("--workers", type=int,
                   help="svidcar runtime.worker_threads (if this build has it); default: svidcar's own")
    p.add_argument("--peer-workers", type=int, default=1,
                   help="haproxy nbthread and nginx worker_processes (default 1)")
    p.add_argument("--peer-resumption", action="store_true",
                   help="let haproxy and nginx resume TLS sessions (svidcar never does; default off)")
    p.add_argument("--svidcar-log", default="warn",
                   help="svidcar --log filter (default warn: no per-connection access log, like the peers)")
    p.add_argument("--json", type=Path, help="write the raw results and the summary here")
    p.add_argument("--markdown", type=Path, help="also write the table here")
    p.add_argument("--no-install", action="store_true", help="never install missing packages")
    p.add_argument("--keep-temp", action="store_true", help="keep the temporary directory (logs, configs)")
    p.add_argument("--deadline-minutes", type=float,
                   help="abort (and clean up) after this long, build excluded (default: 3x the estimate)")
    o = p.parse_args(argv)
    q = o.quick
    o.duration = o.duration or (3 if q else 10)
    o.rate_duration = o.rate_duration or (3 if q else 10)
    o.bulk_seconds = (2 if q else 5) if o.bulk_seconds is None else o.bulk_seconds
    o.download_mb = (128 if q else 512) if o.download_mb is None else o.download_mb
    if o.rounds < 1 or o.duration < 1 or o.rate < 1 or o.rate_duration < 1 or o.connections < 1:
        p.error("--rounds, --duration, --rate, --rate-duration and --connections must be >= 1")
    if o.peer_workers < 1 or (o.workers is not None and o.workers < 1):
        p.error("--workers and --peer-workers must be >= 1")
    return o


def main(argv=None):
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    keys = [k.strip() for k in opts.candidates.split(",") if k.strip()]

    tmp = Path(tempfile.mkdtemp(prefix="svidcar-peers-"))
    env = Env(opts, tmp)
    results = env.results
    started = time.time()
    cleaned = []

    def cleanup():
        Proc.stop_all()
        if tmp.exists() and not cleaned:
            cleaned.append(True)
            if opts.keep_temp:
                say(f"kept {tmp}")
            else:
                shutil.rmtree(tmp, ignore_errors=True)

    atexit.register(cleanup)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"interrupted by {signal.Signals(signum).name}; stopping")

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)

    def on_alarm(_signum, _frame):
        raise BenchError("deadline reached (--deadline-minutes); stopping")

    signal.signal(signal.SIGALRM, on_alarm)

    def write_json(status, error=None):
        if not opts.json:
            return
        doc = {
            "status": status,
            "error": error,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()},
            "versions": versions(env),
            "candidates": [{"key": c.key, "label": c.label, "peer": c.is_peer,
                            "skipped": c.skipped, "notes": c.notes} for c in env.candidates],
            "notes": env.notes,
            "other_load": env.other_load,
            "results": results,
            "summary": summarize(env, results),
        }
        opts.json.parent.mkdir(parents=True, exist_ok=True)
        opts.json.write_text(json.dumps(doc, indent=2) + "\n")
        say(f"wrote {opts.json}")

    try:
        ensure_packages(opts)
        env.candidates = make_candidates(env, keys)
        if any(isinstance(c, SvidcarPair) for c in env.candidates):
            env.svidcar = opts.svidcar.resolve() if opts.svidcar else build_svidcar()
            if not os.access(env.svidcar, os.X_OK):
                raise BenchError(f"{env.svidcar}: not an executable")
        n_pairs = sum(1 for c in env.candidates if c.key != "direct")
        per_cand = 1 + 2 * opts.duration + opts.rate_duration + opts.bulk_seconds + 12 \
            + opts.download_mb / 100
        estimate = 30 + len(env.candidates) * 3 + opts.rounds * len(env.candidates) * per_cand
        deadline = opts.deadline_minutes * 60 if opts.deadline_minutes else 3 * estimate + 300
        say(f"{len(env.candidates)} candidates ({n_pairs} proxy pairs), {opts.rounds} round(s), "
            f"about {estimate / 60:.0f} min; deadline {deadline / 60:.0f} min; temp dir {tmp}")
        signal.alarm(int(deadline))

        env.nginx_load_stream, _ = nginx_stream_module()
        env.pki = make_pki(tmp / "pki")
        busy0, ours0, wall0 = machine_busy_s(), own_cpu_s(), time.monotonic()
        env.backends = Backends(tmp, opts)
        runner = Runner(env)

        # Preflight: every pair starts and passes one request before anything is measured.
        for cand in env.candidates:
            say(f"preflight: {cand.label}")
            try:
                pair = cand.start(env.backends.http_port, "preflight")
            except ConfigRejected as e:
                if isinstance(cand, SvidcarPair) and cand.mode in ("pooled", "tcp"):
                    cand.skipped = ("this svidcar build does not accept the pooled-mode "
                                    "configuration (`tunnel:` keys): " + config_error_line(str(e)))
                    env.note(f"{cand.label} skipped: {cand.skipped}")
                    continue
                raise BenchError(f"{cand.label}: {e}") from None
            except BenchError as e:
                raise BenchError(f"{cand.label}: {e}" if not str(e).startswith(cand.label) else str(e)) from None
            try:
                runner.verify(cand, pair)
            finally:
                pair.stop()

        active = [c for c in env.candidates if not c.skipped]
        if not active:
            raise BenchError("every candidate was skipped: nothing to measure")
        for rnd in range(1, opts.rounds + 1):
            # Each round starts one candidate later, so no candidate is always first or last.
            shift = (rnd - 1) % len(active)
            order = active[shift:] + active[:shift]
            for cand in order:
                say(f"round {rnd}/{opts.rounds}: {cand.label}")
                try:
                    res = runner.measure(cand, rnd)
                except BenchError as e:
                    msg = str(e)
                    raise BenchError(msg if msg.startswith(cand.label) else f"{cand.label}: {msg}") from None
                results.setdefault(cand.key, []).append(res)
        signal.alarm(0)
        # What the rest of the machine did meanwhile: all CPU time spent, less ours (this
        # script, the proxies, the backends and the load generators, all reaped by now).
        Proc.stop_all()
        wall = time.monotonic() - wall0
        others = max(0.0, (machine_busy_s() - busy0) - (own_cpu_s() - ours0))
        env.other_load = {"cores": others / wall, "of_cpus": os.cpu_count(), "seconds": wall}
        if others / wall > 0.05 * (os.cpu_count() or 1):
            env.note(f"other processes used {others / wall:.2f} of {os.cpu_count()} cores on "
                     f"average during the measurements: the figures are noisier than on an idle "
                     f"machine")

        summary = summarize(env, results)
        md = table(env, summary)
        extra = []
        for c in env.candidates:
            for n in c.notes:
                extra.append(f"{c.label}: {n}")
        extra += env.notes + warnings_for(env, results)
        text = md + ("\n\n" + "\n".join(f"- {x}" for x in extra) if extra else "") + "\n"
        print()
        print(text)
        if opts.markdown:
            opts.markdown.write_text(text)
        write_json("ok")
        return 0
    except (BenchError, KeyboardInterrupt) as e:
        signal.alarm(0)
        msg = str(e) or type(e).__name__
        print(f"\npeers.py: error: {msg}", file=sys.stderr)
        write_json("failed", msg)
        return 1 if isinstance(e, BenchError) else 130
    finally:
        signal.alarm(0)
        cleanup()


if __name__ == "__main__":
    sys.exit(main())
