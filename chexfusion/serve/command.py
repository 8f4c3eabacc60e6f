"""``chexfusion serve``: load a run once and serve the web demo with uvicorn."""

from __future__ import annotations

import os

from .limits import MB, ServeLimits


def add_arguments(parser) -> None:
    defaults = ServeLimits()
    parser.add_argument("--model", required=True, help="a stage-2 run folder (or a stage-1 run folder)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to "
                             "the network)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for inference (default: the CPU count; requests run one at a time)")
    parser.add_argument("--max-file-mb", type=float, default=defaults.max_file_bytes / MB,
                        help=f"largest upload file in MB (default {defaults.max_file_bytes // MB})")
    parser.add_argument("--max-request-mb", type=float, default=defaults.max_request_bytes / MB,
                        help=f"largest request in MB (default {defaults.max_request_bytes // MB})")
    parser.add_argument("--max-images", type=int, default=defaults.max_images,
                        help=f"images per request (default {defaults.max_images})")
    parser.add_argument("--max-pixels", type=int, default=defaults.max_pixels,
                        help=f"pixels per image, read from its header before decoding (default {defaults.max_pixels})")


def _limits(args) -> ServeLimits:
    from ..errors import UserError

    try:
        return ServeLimits(max_file_bytes=int(args.max_file_mb * MB), max_request_bytes=int(args.max_request_mb * MB),
                           max_images=args.max_images, max_pixels=args.max_pixels)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _bind(host: str, port: int):
    """The listening socket, bound here so that a busy port is one clear line, not a uvicorn traceback."""
    import socket

    from ..errors import UserError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def run(args) -> int:
    import torch
    import uvicorn

    from ..errors import UserError
    from .app import create_app

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be between 0 and 65535, got {args.port}")
    threads = args.threads if args.threads is not None else (os.cpu_count() or 1)
    if threads < 1:
        raise UserError(f"--threads must be at least 1, got {args.threads}")
    limits = _limits(args)
    torch.set_num_threads(threads)
    with _bind(args.host, args.port) as sock:  # first: a busy port fails before the model is loaded
        app = create_app(args.model, limits, args.device)
        port = sock.getsockname()[1]
        shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
        engine = app.state.engine
        print(f"chexfusion web demo: {engine.kind} run '{engine.run_name}' ({len(engine.classes)} classes) "
              f"at http://{shown}:{port}/  (Ctrl+C stops)", flush=True)
        uvicorn.Server(uvicorn.Config(app, log_level="info")).run(sockets=[sock])
    return 0
