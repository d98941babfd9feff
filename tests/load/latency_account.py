"""Where a check's latency goes at the staged profile's pace: one client, hop by hop.

    python3 tests/load/latency_account.py REDIS_PORT REPLICA_PORT NGINX_PORT [ROUNDS] [RATE]

Run by `SCENARIO=account tests/load/fleet_run.sh`, against the fleet it
started. Each round sends, one after the other over kept-alive connections
from this one process, with a pause of 1/RATE s after the round (the staged
profile's users each send one request per second, so the fleet is nearly
idle between requests):

    Redis PING                  the loopback round-trip and Redis waking up
    replica GET /health/live    a replica that answers without Redis
    replica POST /v1/check      a replica deciding a check on Redis
    nginx GET /health/live      nginx in front of a replica's answer
    nginx POST /v1/check        the whole path the staged profile measures

and prints p50 / p95 / p99 of each, in milliseconds. The steps differ by one
hop each, so their differences say what each hop adds. The client is raw
sockets with the requests' bytes prepared beforehand (Python's http.client
alone adds ~0.3 ms), and the same for every step. Keys are random (policy
`load-capacity`, 1000 per second), so every check is admitted and writes.
"""

import json
import random
import socket
import sys
import time


REOPEN_EVERY = 400


def percentile(values, share):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def main():
    redis_port, replica_port, nginx_port = (int(arg) for arg in sys.argv[1:4])
    rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 1000
    rate = float(sys.argv[5]) if len(sys.argv) > 5 else 50.0

    def connect(port):
        connection = socket.create_connection(("127.0.0.1", port))
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection

    # nginx closes a client connection after 1000 requests (keepalive_requests):
    # every connection is opened afresh, untimed, each REOPEN_EVERY rounds.
    ports = {"redis": redis_port, "replica": replica_port, "nginx": nginx_port}
    connections = {name: connect(port) for name, port in ports.items()}

    def reopen():
        for name, port in ports.items():
            connections[name].close()
            connections[name] = connect(port)

    def ping():
        redis = connections["redis"]
        redis.sendall(b"PING\r\n")
        reply = redis.recv(64)
        if not reply.startswith(b"+PONG"):
            raise SystemExit(f"Redis answered {reply!r}")

    def exchange(name, request, what):
        """Sends one HTTP/1.1 request, reads its whole response (Content-Length)."""
        connection = connections[name]
        connection.sendall(request)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = connection.recv(65536)
            if not chunk:
                raise SystemExit(f"{what} to port {connection.getpeername()[1]}: connection closed after {received!r}")
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            chunk = connection.recv(65536)
            if not chunk:
                raise SystemExit(f"{what} to port {connection.getpeername()[1]}: connection closed after {received!r}")
            body += chunk
        return status

    def get(connection, path):
        request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()

        def send():
            status = exchange(connection, request, f"GET {path}")
            if status != 200:
                raise SystemExit(f"GET {path}: {status}")
        return send

    def check(connection):
        # Prepared ahead: building a request is the client's cost, not the path's.
        requests = []
        for _ in range(rounds + 20):
            body = json.dumps({"policy": "load-capacity", "key": f"account-{random.randrange(10**9)}"}).encode()
            requests.append(
                b"POST /v1/check HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
            )
        pending = iter(requests)

        def send():
            status = exchange(connection, next(pending), "POST /v1/check")
            if status not in (200, 429):
                raise SystemExit(f"POST /v1/check: {status}")
        return send

    steps = [
        ("Redis PING", ping),
        ("replica GET /health/live", get("replica", "/health/live")),
        ("replica POST /v1/check", check("replica")),
        ("nginx GET /health/live", get("nginx", "/health/live")),
        ("nginx POST /v1/check", check("nginx")),
    ]
    timings = {name: [] for name, _ in steps}
    for index in range(rounds + 20):
        if index and index % REOPEN_EVERY == 0:
            reopen()
        for name, send in steps:
            started = time.perf_counter()
            send()
            if index >= 20:  # the first rounds open connections and warm caches
                timings[name].append((time.perf_counter() - started) * 1000)
        time.sleep(1 / rate)

    print(f"{rounds} rounds, {rate:g} rounds/s, one client, each step right after the previous one")
    print(f"| step | p50 | p95 | p99 |")
    print(f"|---|---:|---:|---:|")
    for name, _ in steps:
        values = timings[name]
        print(
            f"| {name} | {percentile(values, 0.50):.3f} ms | {percentile(values, 0.95):.3f} ms"
            f" | {percentile(values, 0.99):.3f} ms |"
        )


if __name__ == "__main__":
    main()
