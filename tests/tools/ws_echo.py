"""A WebSocket server and client with the `websockets` library.

`ws_echo.py server` listens on 127.0.0.1:0, prints "LISTENING <port>" and answers every
message m with JSON {"echo": m, "client_id": <the upgrade request's x-svidcar-client-id or
null>}.

`ws_echo.py client URL MESSAGE` opens the WebSocket (the handshake must end in 101), sends
MESSAGE, prints the reply and closes; exits non-zero on any failure (10 s limit)."""
import asyncio
import json
import sys

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve


async def server():
    async def echo(ws):
        client_id = ws.request.headers.get("x-svidcar-client-id")
        async for message in ws:
            await ws.send(json.dumps({"echo": message, "client_id": client_id}))

    async with serve(echo, "127.0.0.1", 0) as srv:
        port = next(iter(srv.sockets)).getsockname()[1]
        print(f"LISTENING {port}", flush=True)
        await asyncio.get_running_loop().create_future()


async def client(url, message):
    async with connect(url, open_timeout=10) as ws:
        await ws.send(message)
        print(await asyncio.wait_for(ws.recv(), 10), flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["server"]:
        asyncio.run(server())
    elif sys.argv[1:2] == ["client"] and len(sys.argv) == 4:
        asyncio.run(client(sys.argv[2], sys.argv[3]))
    else:
        sys.exit("usage: ws_echo.py server | client URL MESSAGE")
