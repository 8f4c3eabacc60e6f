"""Run the demo app under uvicorn in a background thread: for notebooks, scripts and the tests.

``chexfusion serve`` blocks; a notebook or a test wants the server next to its
own code and gone afterwards. The socket is bound before the thread starts (port
0 picks a free one, with no race between finding a port and using it), and the
context manager stops the server and joins the thread on exit.
"""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager


@contextmanager
def serve_in_background(app, host: str = "127.0.0.1", port: int = 0, start_timeout: float = 30.0,
                        stop_timeout: float = 30.0):
    """Serve ``app`` on ``host:port`` while the ``with`` block runs; yields the base URL (no trailing slash)."""
    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="chexfusion-serve", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + start_timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the demo server did not start on {host}:{sock.getsockname()[1]}")
            time.sleep(0.02)
        shown = f"[{host}]" if ":" in host else host
        yield f"http://{shown}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(stop_timeout)
        sock.close()
