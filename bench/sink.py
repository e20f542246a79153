"""A minimal asyncio HTTP/1.1 sink for the benchmark: answers every POST with 201.

    python bench/sink.py [--port 0] [--delay 0.05] [--record]

Used where nginx cannot do the job: the ``latency`` figure needs each request's arrival time keyed
by its body (``--record`` keeps ``customerEmail`` -> arrival ``time.time()``), and it stands in
for nginx's ``echo_sleep`` when the echo module is missing. Every connection is its own
coroutine, so a delayed answer holds only its own connection (as a slow API would). Keep-alive,
``Content-Length`` bodies only (which is what httpx sends for ``content=bytes``).

Control endpoints (not counted): ``GET /_bench/stats`` -> ``{"count": n}``,
``GET /_bench/arrivals`` -> ``{email: time}``, ``POST /_bench/reset``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import time

EMAIL = re.compile(rb'"customerEmail":"([^"]*)"')
CREATED = b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n"


class Sink:
    def __init__(self, delay: float, record: bool) -> None:
        self.delay = delay
        self.record = record
        self.count = 0
        self.arrivals: dict[str, float] = {}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                arrived = time.time()
                request_line, _, header_block = head.partition(b"\r\n")
                length = 0
                close = False
                for line in header_block.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"connection" and value.strip().lower() == b"close":
                        close = True
                body = await reader.readexactly(length) if length else b""
                path = request_line.split(b" ")[1] if b" " in request_line else b"/"
                if path.startswith(b"/_bench/"):
                    writer.write(self._control(path))
                else:
                    self.count += 1
                    if self.record:
                        m = EMAIL.search(body)
                        if m:
                            self.arrivals[m.group(1).decode()] = arrived
                    if self.delay:
                        await asyncio.sleep(self.delay)
                    writer.write(CREATED)
                await writer.drain()
                if close:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    def _control(self, path: bytes) -> bytes:
        if path == b"/_bench/reset":
            self.count = 0
            self.arrivals = {}
            payload: object = {"ok": True}
        elif path == b"/_bench/arrivals":
            payload = self.arrivals
        else:
            payload = {"count": self.count}
        body = json.dumps(payload).encode()
        return (
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )


async def serve(host: str, port: int, delay: float, record: bool) -> None:
    sink = Sink(delay, record)
    server = await asyncio.start_server(sink.handle, host, port, backlog=4096)
    bound = server.sockets[0].getsockname()[1]
    print(f"sink listening on http://{host}:{bound} delay={delay}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--record", action="store_true", help="keep arrival times by email")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port, args.delay, args.record))


if __name__ == "__main__":
    main()
