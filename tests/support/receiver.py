"""A bare ASGI receiver for benchmarks: reads the whole body of any request and answers
200 with an empty body (which a sink reads as "all accepted"). It runs in its own uvicorn
process so that the client being measured keeps its core.

    with run_receiver() as url: ...
    python -m tests.support.receiver --port P
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.support.servers import _wait_port, free_port

ROOT = Path(__file__).resolve().parents[2]


async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"0"), (b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b""})


@contextlib.contextmanager
def run_receiver(*options: str) -> Iterator[str]:
    """The receiver on a free port; ``options`` as on its command line (``--workers 2``)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.receiver", "--port", str(port), *options],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    import uvicorn

    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--loop", default="auto", help="uvicorn's event loop: auto, asyncio, uvloop")
    ap.add_argument("--http", default="auto", help="uvicorn's HTTP parser: auto, h11, httptools")
    args = ap.parse_args()
    uvicorn.run("tests.support.receiver:app" if args.workers > 1 else app, host="127.0.0.1",
                port=args.port, log_level="warning", access_log=False, workers=args.workers,
                loop=args.loop, http=args.http)


if __name__ == "__main__":
    main()
