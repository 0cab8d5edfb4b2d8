"""An HTTP app for the end-to-end tests, served by a third-party server: Python's own
http.server (HTTP/1.1 with keep-alive) by default, or Hypercorn with --h2 (HTTP/1.1 and
HTTP/2 with prior knowledge, h2c). Every request is answered 200 with a JSON body:
{"method", "path", "http_version", "headers": [[name, value], ...], "body_len", "body_sha256"}
(names lower-case, in the order received, repeated headers kept; the request body as received,
content-length or chunked). Prints "LISTENING <port>" once bound to 127.0.0.1:0,
then "SEEN <method> <path>" for every request, so a test can tell what reached the app."""
import hashlib
import json
import socket
import sys


def seen(method, path):
    print(f"SEEN {method} {path}", flush=True)


def answer(method, path, version, headers, body=b""):
    return json.dumps(
        {
            "method": method,
            "path": path,
            "http_version": version,
            "headers": headers,
            "body_len": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
        }
    ).encode()


def read_chunked(rfile):
    body = b""
    while True:
        size = int(rfile.readline().split(b";")[0].strip(), 16)
        if size == 0:
            while rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return body
        body += rfile.read(size)
        rfile.readline()


def stdlib():
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Echo(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def handle_one_request(self):
            # Every method, not just the do_* ones declared.
            self.raw_requestline = self.rfile.readline(65537)
            if not self.raw_requestline:
                self.close_connection = True
                return
            if not self.parse_request():
                return
            seen(self.command, self.path)
            if "chunked" in self.headers.get("transfer-encoding", "").lower():
                received = read_chunked(self.rfile)
            else:
                received = self.rfile.read(int(self.headers.get("content-length") or 0))
            headers = [[k.lower(), v] for k, v in self.headers.items()]
            body = answer(self.command, self.path, self.request_version, headers, received)
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    server.daemon_threads = True
    print(f"LISTENING {server.server_address[1]}", flush=True)
    server.serve_forever()


def hypercorn():
    import asyncio

    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        seen(scope["method"], scope["path"])
        more = True
        while more:
            msg = await receive()
            more = msg.get("more_body", False)
        headers = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]]
        body = answer(scope["method"], scope["path"], scope["http_version"], headers)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.set_inheritable(True)
    config = Config()
    config.bind = [f"fd://{sock.fileno()}"]
    config.accesslog = None
    config.errorlog = None
    print(f"LISTENING {sock.getsockname()[1]}", flush=True)
    asyncio.run(serve(app, config))


if __name__ == "__main__":
    hypercorn() if "--h2" in sys.argv[1:] else stdlib()
