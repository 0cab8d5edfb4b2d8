"""A server-first app (SMTP-like): on every connection it sends "220 ready\r\n" at once, before
the client says anything, then echoes what it gets. Prints "LISTENING <port>" once bound to
127.0.0.1:0."""
import socket
import threading


def serve(conn):
    with conn:
        conn.sendall(b"220 ready\r\n")
        while data := conn.recv(65536):
            conn.sendall(data)


listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", 0))
listener.listen(128)
print(f"LISTENING {listener.getsockname()[1]}", flush=True)
while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
