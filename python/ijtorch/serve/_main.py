"""``ijtorch serve`` / ``python -m ijtorch.serve``: start the model server with uvicorn."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from typing import Any

__all__ = ["add_arguments", "serve", "main", "check_options"]

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                   "only; any other needs a token)")
    p.add_argument("--port", type=int, default=8765, help="TCP port (default 8765; 0 picks a free one, printed)")
    p.add_argument("--token-file", default=None, help="file whose first line is the token clients must send as "
                   "'Authorization: Bearer TOKEN' (all routes but /health*); or set $IJTORCH_SERVER_TOKEN")
    p.add_argument("--token", default=None, help="the token itself (visible to other users in 'ps': prefer "
                   "--token-file or $IJTORCH_SERVER_TOKEN)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="a Host/Origin name accepted besides localhost names (repeatable; DNS-rebinding guard)")
    p.add_argument("--max-queue", type=int, default=64, help="requests queued or running before new ones get "
                   "503 + Retry-After (default 64)")
    p.add_argument("--max-per-client", type=int, default=None, help="requests one client address may have queued "
                   "or running (default: three quarters of --max-queue)")
    p.add_argument("--max-request-mb", type=float, default=256.0, help="largest request body in MiB (default 256)")
    p.add_argument("--max-memory-gb", type=float, default=None, help="memory budget for uploads, admitted work "
                   "(estimated from shape, dtype, scale, model) and replies in flight (default: half the RAM)")
    p.add_argument("--max-pixels", type=int, default=1 << 26, help="most pixels the model may see in one "
                   "plane or volume, after --scale (default 67108864)")
    p.add_argument("--max-batch", type=int, default=8, help="largest dynamic batch; 1 switches batching off")
    p.add_argument("--batch-wait-ms", type=float, default=0.0,
                   help="extra wait for batch company while the server is busy (an idle server answers at once)")
    p.add_argument("--header-timeout", type=float, default=10.0, help="seconds for a request's head (default 10)")
    p.add_argument("--body-timeout", type=float, default=60.0, help="seconds for a request's body (default 60)")
    p.add_argument("--send-timeout", type=float, default=60.0,
                   help="seconds a reply waits for a client that does not read it (default 60)")
    p.add_argument("--request-timeout", type=float, default=600.0,
                   help="default and largest per-request deadline; clients ask less with X-Request-Timeout")
    p.add_argument("--keep-alive", type=float, default=5.0, help="seconds an idle keep-alive connection stays open")
    p.add_argument("--max-connections", type=int, default=512, help="open connections before new requests get 503")
    p.add_argument("--state-dir", default=None, help="folder of the job database and results, kept across restarts "
                   "(default: $IJTORCH_SERVER_STATE, else a temporary folder)")
    p.add_argument("--job-ttl-h", type=float, default=24.0, help="hours a finished job's result is kept (default 24)")
    p.add_argument("--job-results-mb", type=float, default=2048.0,
                   help="total size of kept job results in MiB, oldest dropped first (default 2048)")
    p.add_argument("--drain-s", type=float, default=30.0,
                   help="on SIGTERM, seconds to finish requests in flight before stopping (default 30)")
    p.add_argument("--no-access-log", action="store_true", help="no access log line per request on stderr")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")


#: option -> (minimum, inclusive?) for the numeric options; None values are defaults
_LIMITS = {"port": (0, True, 65535), "max_queue": (1, True, None), "max_per_client": (1, True, None),
           "max_request_mb": (0, False, None), "max_memory_gb": (0, False, None), "max_pixels": (1, True, None),
           "max_batch": (1, True, None), "batch_wait_ms": (0, True, 60000), "header_timeout": (0, False, None),
           "body_timeout": (0, False, None), "send_timeout": (0, False, None), "request_timeout": (0, False, None),
           "keep_alive": (0, False, None), "max_connections": (1, True, None), "job_ttl_h": (0, False, None),
           "job_results_mb": (0, True, None), "drain_s": (0, True, None), "threads": (0, True, 4096)}


def check_options(args: argparse.Namespace) -> None:
    """Raise ValueError naming the first numeric option out of range (one line)."""
    import math

    for name, (low, inclusive, high) in _LIMITS.items():
        value = getattr(args, name, None)
        if value is None:
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{flag} {value}: expected a finite number")
        if (value < low if inclusive else value <= low) or (high is not None and value > high):
            rng = f">= {low}" if inclusive else f"> {low}"
            raise ValueError(f"{flag} {value:g}: expected a number {rng}" + (f" and <= {high}" if high else ""))


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket (so the real port of ``--port 0`` is known before uvicorn starts)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind(addr)
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(args: argparse.Namespace) -> int:
    """Check the settings, say where the server listens and run it until interrupted (SIGTERM drains)."""
    from ._security import check_bind, read_token

    try:
        check_options(args)
        token = read_token(args.token, getattr(args, "token_file", None))
        notice = check_bind(args.host, token)
        import prometheus_client  # noqa: F401
        import uvicorn

        from ._protocol import DeadlineH11Protocol
        from .app import ServerConfig, create_app
    except ValueError as exc:
        print(f"ijtorch serve: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"ijtorch serve: {exc.name} is missing; install the server extra: pip install 'ijtorch[serve]'",
              file=sys.stderr)
        return 2
    if args.token is not None and not getattr(args, "token_file", None):
        print("ijtorch serve: warning: --token on the command line is visible to other users (ps); prefer "
              "--token-file or $IJTORCH_SERVER_TOKEN", file=sys.stderr)
    state_dir = args.state_dir or os.environ.get("IJTORCH_SERVER_STATE") or None
    try:
        sock = _bind(args.host, args.port)
    except OSError as exc:
        print(f"ijtorch serve: cannot listen on {args.host} port {args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    port = sock.getsockname()[1]
    config = ServerConfig(host=args.host, port=port, token=token, max_queue=args.max_queue,
                          max_request_mb=args.max_request_mb, max_batch=args.max_batch,
                          batch_wait_ms=args.batch_wait_ms, device=args.device, threads=args.threads,
                          max_memory_gb=args.max_memory_gb, max_pixels=args.max_pixels,
                          max_per_client=args.max_per_client, header_timeout=args.header_timeout,
                          body_timeout=args.body_timeout, send_timeout=args.send_timeout,
                          request_timeout=args.request_timeout, allow_hosts=tuple(args.allow_host),
                          state_dir=state_dir, job_ttl_h=args.job_ttl_h, job_results_mb=args.job_results_mb)
    try:
        app = create_app(config)
    except (RuntimeError, OSError, ValueError) as exc:
        sock.close()
        print(f"ijtorch serve: {exc}", file=sys.stderr)
        return 2
    srv = app.state.server
    if not args.no_access_log:
        access = logging.getLogger("ijtorch.serve.access")
        access.setLevel(logging.INFO)
        if not access.handlers:
            h = logging.StreamHandler(sys.stderr)
            h.setFormatter(logging.Formatter("%(asctime)s access %(message)s"))
            access.addHandler(h)
            access.propagate = False
    display = f"[{args.host}]" if ":" in args.host else args.host
    print(f"ijtorch serve: {notice}; http://{display}:{port} (port {port}), max queue {args.max_queue} "
          f"({srv.admission.per_client} per client), memory budget {srv.ledger.limit / (1 << 30):.1f} GiB, max request "
          f"{args.max_request_mb:g} MiB, batches up to {args.max_batch}; jobs in {srv.store.folder}",
          file=sys.stderr, flush=True)
    ucfg = uvicorn.Config(app, log_level="warning", access_log=False, http=DeadlineH11Protocol.with_timeout(
        args.header_timeout), timeout_keep_alive=args.keep_alive, h11_max_incomplete_event_size=16 * 1024,
        limit_concurrency=args.max_connections, timeout_graceful_shutdown=args.drain_s, lifespan="on")

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:  # SIGTERM/SIGINT: not ready any more, drain
            srv.draining = True
            super().handle_exit(sig, frame)

    _Server(ucfg).run(sockets=[sock])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ijtorch.serve", description="Serve ijtorch models over HTTP.")
    add_arguments(parser)
    parser.add_argument("-v", "--verbose", action="count", default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2),
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    return serve(args)
