"""Container health check: exit 0 only if GET URL answers 200 (and contains TEXT, if given).

    python3 healthcheck.py http://127.0.0.1:8080/readyz ['"broker":"connected"']

A plain socket instead of urllib: Docker runs this every few seconds in every
container, and importing urllib (http.client, email, ssl) costs several times more.
"""

from __future__ import annotations

import socket
import sys
from urllib.parse import urlsplit

TIMEOUT_S = 3.0


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__.splitlines()[0], file=sys.stderr)
        return 2
    url = urlsplit(argv[1])
    expect = argv[2].encode() if len(argv) == 3 else b""
    host, port = url.hostname or "127.0.0.1", url.port or 80
    request = (
        f"GET {url.path or '/'} HTTP/1.0\r\nHost: {host}:{port}\r\nUser-Agent: healthcheck\r\n\r\n"
    )
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT_S) as conn:
            conn.sendall(request.encode())
            answer = b""
            while chunk := conn.recv(65536):
                answer += chunk
    except OSError as exc:
        print(f"{argv[1]}: {exc}", file=sys.stderr)
        return 1
    head, _, body = answer.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if status.split(b" ")[1:2] != [b"200"] or expect not in body:
        print(f"{argv[1]}: {status.decode(errors='replace')} {body[:300]!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
