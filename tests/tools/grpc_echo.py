"""A gRPC server and client with grpcio (raw bytes, generic handlers, no protoc).

`grpc_echo.py server` serves echo.Echo on 127.0.0.1:0 and prints "LISTENING <port>", then
"SEEN <path>" for every call that reaches it. Methods: Unary (unary-unary echo), Stream
(bidirectional: echoes each message) and Forbidden (unary-unary echo, for policies to deny).
Every call ends with the trailing metadata x-echo-trailer: kept.

`grpc_echo.py client HOST:PORT` calls Unary with b"ping", Stream with a, b, c and Forbidden with
b"no", each with a 10 s deadline, and prints one JSON line per call:
{"call", "code" (a grpc.StatusCode name), "details", "replies" (as text), "trailers"}."""
import json
import sys
from concurrent import futures

import grpc

SERVICE = "echo.Echo"
TRAILER = ("x-echo-trailer", "kept")


def server():
    def unary(name):
        def handle(request, context):
            print(f"SEEN /{SERVICE}/{name}", flush=True)
            context.set_trailing_metadata([TRAILER])
            return request

        return grpc.unary_unary_rpc_method_handler(handle)

    def stream(requests, context):
        print(f"SEEN /{SERVICE}/Stream", flush=True)
        for r in requests:
            yield r
        context.set_trailing_metadata([TRAILER])

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": unary("Unary"),
            "Forbidden": unary("Forbidden"),
            "Stream": grpc.stream_stream_rpc_method_handler(stream),
        },
    )
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    srv.add_generic_rpc_handlers((handler,))
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    print(f"LISTENING {port}", flush=True)
    srv.wait_for_termination()


def client(target):
    channel = grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)])

    def report(call, code, details, replies, trailers):
        print(
            json.dumps(
                {
                    "call": call,
                    "code": code.name,
                    "details": details,
                    "replies": [r.decode() for r in replies],
                    "trailers": {k: v for k, v in (trailers or [])},
                }
            ),
            flush=True,
        )

    for name, payload in (("Unary", b"ping"), ("Forbidden", b"no")):
        method = channel.unary_unary(f"/{SERVICE}/{name}")
        try:
            reply, call = method.with_call(payload, timeout=10)
            report(name, call.code(), call.details(), [reply], call.trailing_metadata())
        except grpc.RpcError as e:
            report(name, e.code(), e.details(), [], e.trailing_metadata())

    call = channel.stream_stream(f"/{SERVICE}/Stream")(iter([b"a", b"b", b"c"]), timeout=10)
    replies = []
    try:
        for r in call:
            replies.append(r)
    except grpc.RpcError:
        pass
    report("Stream", call.code(), call.details(), replies, call.trailing_metadata())
    channel.close()


if __name__ == "__main__":
    if sys.argv[1:2] == ["server"]:
        server()
    elif sys.argv[1:2] == ["client"] and len(sys.argv) == 3:
        client(sys.argv[2])
    else:
        sys.exit("usage: grpc_echo.py server | client HOST:PORT")
