"""``ijtorch serve`` / ``python -m ijtorch.serve``: start the model server with uvicorn."""

from __future__ import annotations

import argparse
import logging
import sys

__all__ = ["add_arguments", "serve", "main"]

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                   "only; any other needs --token)")
    p.add_argument("--port", type=int, default=8765, help="TCP port (default 8765; 0 picks a free one)")
    p.add_argument("--token", default=None, help="require 'Authorization: Bearer TOKEN' on every request but "
                   "/health (default: $IJTORCH_TOKEN if set)")
    p.add_argument("--max-queue", type=int, default=64, help="requests queued or running before new ones get "
                   "503 + Retry-After (default 64)")
    p.add_argument("--max-request-mb", type=float, default=256.0, help="largest request body in MiB (default 256)")
    p.add_argument("--max-batch", type=int, default=8, help="largest dynamic batch; 1 switches batching off")
    p.add_argument("--batch-wait-ms", type=float, default=0.0,
                   help="extra wait for batch company while the server is busy (an idle server answers at once)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")


def serve(args: argparse.Namespace) -> int:
    """Check the settings, say where the server listens and run it until interrupted."""
    import os

    from ._security import check_bind

    token = args.token if args.token is not None else (os.environ.get("IJTORCH_TOKEN") or None)
    try:
        notice = check_bind(args.host, token)
        import uvicorn

        from .app import ServerConfig, create_app
    except ValueError as exc:
        print(f"ijtorch serve: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"ijtorch serve: {exc.name} is missing; install the server extra: pip install 'ijtorch[serve]'",
              file=sys.stderr)
        return 2
    config = ServerConfig(host=args.host, port=args.port, token=token, max_queue=args.max_queue,
                          max_request_mb=args.max_request_mb, max_batch=args.max_batch,
                          batch_wait_ms=args.batch_wait_ms, device=args.device, threads=args.threads)
    print(f"ijtorch serve: {notice}; port {args.port}, max queue {args.max_queue}, max request "
          f"{args.max_request_mb:g} MiB, batches up to {args.max_batch}", file=sys.stderr, flush=True)
    uvicorn.run(create_app(config), host=args.host, port=args.port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=5)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ijtorch.serve", description="Serve ijtorch models over HTTP.")
    add_arguments(parser)
    parser.add_argument("-v", "--verbose", action="count", default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2),
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    return serve(args)
