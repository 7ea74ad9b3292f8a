"""Load and fault test of ``ijtorch serve`` on loopback: throughput, latency, failures, wrong answers.

Starts real server processes on free loopback ports, then

1. batched vs unbatched: two servers that differ only in ``--max-batch`` (8 vs 1: the same code
   path, the same model, the same ``--threads``) are alive together and get the same small-image
   ``/segment`` requests from the same number of clients, in alternating rounds so that load
   from other processes hits both alike. Prints requests/s and the server's CPU time per request
   (``/proc``; less sensitive to a busy machine than wall time) for each, and their ratios;
   then the same for ``/classify`` requests of 1 to ``--crops`` cell crops (``3 x 40 x 40`` uint16
   from the shared Jurkat data) on a classifier trained here for one epoch (``--classifier-widths``;
   the default is ``train_classifier``'s), and checks the batched server's answers against
   in-process ``classify()``;
2. mixed load: ``--clients`` threads x ``--requests`` requests each, mixing valid requests
   (every answer compared with in-process ``segment()`` pixel for pixel), malformed bodies
   (expect 4xx), oversized bodies (expect 413), unknown models (expect 404), segmentation jobs
   cancelled right after submission (expect 202, then cancelled or done) and requests whose
   client hangs up before the answer. Prints throughput, p50/p99 latency, failures, wrong
   answers and the server's RSS after the first tenth of the load (the baseline: model, caches,
   allocator arenas) and after the run.

The model is the bundled ``nuclei`` star-convex model (``--model tiny``: the seeded test model
of ``tests/integration/_serve_model.py``, whose ~50 speckles per 64x64 crop make non-maximum
suppression, which batching cannot share, most of the work). The comparison's clients use the
standard library's ``http.client`` (about 0.5 ms of client CPU per request, against several ms
for ``httpx``): client and server share this machine's cores, so a heavy client would measure
itself. Bounded: stops after the request counts or ``--time-limit`` seconds for the mixed load
(``--requests 0`` skips it).

    python3 benchmarks/bench_serve.py --clients 8 --requests 1250

``--hostile`` (issue 18) instead runs a bounded, loopback-only soak on one server (the tiny
model): valid ``/segment`` requests alone, then the same number next to attacker threads —
slow-body connections (a 10 MB Content-Length and 100 bytes), requests oversized by ``scale``,
clients that never read a 4 MiB reply, clients that hang up on a slow tiled request, deeply
nested JSON headers and a foreign ``Host`` — and prints the valid requests served, their p99
latency with and without attackers, wrong answers, unexpected answers to attacks, 5xx, the
server's peak RSS and the CPU it spent on abandoned work:

    python3 benchmarks/bench_serve.py --hostile --clients 4 --hostile-valid 1500 --attackers 12
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
from _serve_classifier import load_crops, make_tiny_classifier  # noqa: E402
from _serve_model import CALIBRATION_IMAGE, make_tiny_model  # noqa: E402
from _serve_util import ServerProcess  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"


def _crops(image: np.ndarray, n: int, size: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    ys = rng.integers(0, image.shape[0] - size, n)
    xs = rng.integers(0, image.shape[1] - size, n)
    return [np.ascontiguousarray(image[y:y + size, x:x + size]) for y, x in zip(ys, xs)]


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux ``/proc``), or None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _post_all(url: str, bodies: list[bytes], clients: int, total: int, route: str = "/segment") -> None:
    """``total`` POST ``route`` requests from ``clients`` keep-alive connections; each must give 200."""
    from ijtorch.serve._wire import MEDIA_TYPE

    host, port = url.rsplit("/", 1)[1].split(":")
    counter = iter(range(total))
    lock = threading.Lock()

    def worker(_: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            while True:
                with lock:
                    k = next(counter, None)
                if k is None:
                    return
                conn.request("POST", route, body=bodies[k % len(bodies)], headers={"Content-Type": MEDIA_TYPE})
                reply = conn.getresponse()
                reply.read()
                if reply.status != 200:
                    raise RuntimeError(f"{route} answered {reply.status}")
        finally:
            conn.close()

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, range(clients)))


def _compare(folder: Path, common: tuple[str, ...], bodies: list[bytes], clients: int, total: int,
             rounds: int, route: str = "/segment",
             check: Callable[[str], str] | None = None) -> dict[str, dict[str, Any]]:
    """Batched and unbatched servers side by side, in alternating rounds; rates and CPU per request.

    ``check(url)``, when given, runs on the batched server after the rounds; its text is returned
    as ``out["batched"]["check"]``."""
    import httpx

    out: dict[str, dict[str, float]] = {}
    with ServerProcess(folder, *common, "--max-batch", "1") as one, \
            ServerProcess(folder, *common, "--max-batch", "8") as eight:
        servers = {"unbatched": one, "batched": eight}
        for srv in servers.values():  # warm-up: model load, first-call allocations, connections
            _post_all(srv.url, bodies, clients, 4 * clients, route)
        stats = {label: {"seconds": 0.0, "cpu": 0.0, "n": 0} for label in servers}
        per_round = max(total // rounds, clients)
        for r in range(rounds):
            for label in (("unbatched", "batched") if r % 2 == 0 else ("batched", "unbatched")):
                srv = servers[label]
                c0, t0 = _cpu_seconds(srv.proc.pid), time.perf_counter()
                _post_all(srv.url, bodies, clients, per_round, route)
                stats[label]["seconds"] += time.perf_counter() - t0
                c1 = _cpu_seconds(srv.proc.pid)
                stats[label]["cpu"] = float("nan") if c0 is None or c1 is None else stats[label]["cpu"] + c1 - c0
                stats[label]["n"] += per_round
        for label, srv in servers.items():
            batching = httpx.get(srv.url + "/metrics").json()["batching"]
            s = stats[label]
            out[label] = {"rate": s["n"] / s["seconds"], "cpu_ms": 1000 * s["cpu"] / s["n"],
                          "mean_batch": batching["mean_size"], "largest": batching["largest"]}
        if check is not None:
            out["batched"]["check"] = check(eight.url)
    return out


def _report(name: str, res: dict[str, dict[str, Any]]) -> None:
    u, b = res["unbatched"], res["batched"]
    print(f"  {name}: unbatched {u['rate']:.1f} req/s ({u['cpu_ms']:.2f} ms server CPU/req), "
          f"batched {b['rate']:.1f} req/s ({b['cpu_ms']:.2f} ms/req, mean batch {b['mean_batch']:.2f}, "
          f"largest {b['largest']}): throughput {b['rate'] / u['rate']:.2f}x, "
          f"CPU per request {u['cpu_ms'] / b['cpu_ms']:.2f}x less" + (f"; {b['check']}" if "check" in b else ""))


def _classify_check(stacks: list[np.ndarray], model_path: str, clients: int) -> Callable[[str], str]:
    """A check that sends every stack concurrently and compares each answer with ``classify()``."""

    def check(url: str) -> str:
        import httpx

        from ijtorch.serve._wire import MEDIA_TYPE, decode, encode
        from ijtorch.tasks.classify import classify

        def post(stack: np.ndarray) -> tuple[dict, dict]:
            r = httpx.post(url + "/classify", content=encode({"model": Path(model_path).name}, {"images": stack}),
                           headers={"Content-Type": MEDIA_TYPE}, timeout=60)
            r.raise_for_status()
            return decode(r.content)

        with ThreadPoolExecutor(clients) as pool:
            replies = list(pool.map(post, stacks))
        worst, wrong = 0.0, 0
        for stack, (header, arrays) in zip(stacks, replies):
            want = classify(stack, model=model_path, device="cpu")
            worst = max(worst, float(np.abs(arrays["probabilities"] - want["probabilities"]).max()))
            wrong += int(not np.array_equal(arrays["class_index"], want["class_index"]))
        return (f"{len(stacks)} concurrent answers vs in-process classify(): {wrong} with another class, "
                f"largest probability difference {worst:.1e}")

    return check


def _hang_up(url: str, body: bytes) -> None:
    """Send a whole valid request, then close the connection without reading the answer."""
    from ijtorch.serve._wire import MEDIA_TYPE

    host, port = url.rsplit("/", 1)[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(f"POST /segment HTTP/1.1\r\nHost: {host}\r\nContent-Type: {MEDIA_TYPE}\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n".encode() + body)


# ----------------------------------------------------------------------------------- --hostile
def _peak_rss(pid: int) -> int:
    """Peak resident memory (VmHWM) of a process in bytes (Linux ``/proc``; 0 elsewhere)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class _Conn:
    """A keep-alive ``http.client`` connection to 127.0.0.1 that reconnects after errors."""

    def __init__(self, port: int) -> None:
        self.port, self.conn = port, None

    def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        from ijtorch.serve._wire import MEDIA_TYPE

        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            try:
                self.conn.request("POST", path, body=body, headers={"Content-Type": MEDIA_TYPE, **(headers or {})})
                r = self.conn.getresponse()
                data = r.read()
                if r.getheader("connection", "").lower() == "close":
                    self.conn.close()
                    self.conn = None
                return r.status, data
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")


def hostile(args: argparse.Namespace) -> int:
    """Valid ``/segment`` traffic alone, then the same traffic next to attackers; one server."""
    from ijtorch.io.tiff import read_tiff
    from ijtorch.serve._wire import MEDIA_TYPE, decode, encode
    from ijtorch.tasks.segment import segment

    import torch

    torch.set_num_threads(args.threads)
    image = read_tiff(SHARED / CALIBRATION_IMAGE).data
    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as tmp:
        folder = Path(tmp)
        make_tiny_model(folder, image)
        os.environ["IJTORCH_MODELS"] = str(folder)
        crops = _crops(image, 16, args.size)
        expected = [segment(c, "YX", model="tiny", device="cpu").labels for c in crops]
        good = [encode({"axes": "YX", "model": "tiny"}, {"image": c}) for c in crops]
        budget_gb = args.budget_gb
        flags = ("--threads", str(args.threads), "--max-queue", "64", "--max-memory-gb", str(budget_gb),
                 "--max-pixels", "1000000", "--max-request-mb", "16", "--header-timeout", "2", "--body-timeout", "2",
                 "--send-timeout", "2", "--no-access-log", "--state-dir", str(folder / "state"))
        with ServerProcess(folder, *flags) as srv:
            port = srv.port
            pid = srv.proc.pid

            def valid_load(n_total: int, stop_at: float) -> dict[str, Any]:
                lat: list[float] = []
                out = {"served": 0, "wrong": 0, "failed": 0, "busy": 0}
                lock = threading.Lock()
                per = [n_total // args.clients + (k < n_total % args.clients) for k in range(args.clients)]

                def worker(k: int) -> None:
                    rnd, conn = random.Random(k), _Conn(port)
                    for _ in range(per[k]):
                        if time.monotonic() > stop_at:
                            return
                        i = rnd.randrange(len(good))
                        t0 = time.perf_counter()
                        try:
                            status, data = conn.post("/segment", good[i])
                        except (OSError, http.client.HTTPException):
                            status, data = 0, b""
                        dt = time.perf_counter() - t0
                        with lock:
                            if status == 200:
                                lat.append(dt)
                                out["served"] += 1
                                out["wrong"] += int(not np.array_equal(decode(data)[1]["labels"], expected[i]))
                            elif status == 503:
                                out["busy"] += 1
                            else:
                                out["failed"] += 1

                with ThreadPoolExecutor(args.clients) as pool:
                    list(pool.map(worker, range(args.clients)))
                out["p50_ms"] = float(np.percentile(np.array(lat) * 1000, 50)) if lat else float("nan")
                out["p99_ms"] = float(np.percentile(np.array(lat) * 1000, 99)) if lat else float("nan")
                return out

            stop = time.monotonic() + args.time_limit
            valid_load(args.clients * 5, stop)  # warm-up: model loaded, caches filled
            base_cpu = _cpu_seconds(pid) or 0.0
            t0 = time.perf_counter()
            baseline = valid_load(args.hostile_valid, stop)
            base_s = time.perf_counter() - t0

            # ---- attackers
            counts: dict[str, int] = {}
            bad: dict[str, int] = {}
            lock = threading.Lock()
            done = threading.Event()
            slow_movie = encode({"axes": "TYX", "model": "tiny", "tile_size": 32, "overlap": 24},
                                {"image": np.stack([image[:128, :128]] * 4)})
            by_scale = encode({"axes": "YX", "model": "tiny", "scale": 10}, {"image": image[:256, :256]})
            nested = struct_pack(b'{"axes":"YX","calibration":' + b"[" * 50000 + b"]" * 50000 + b"}")
            never_read = encode({"axes": "YX"}, {"image": np.random.default_rng(1).random((1024, 1024), np.float32)})
            head = lambda path, n, host="127.0.0.1": (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: "
                                                     f"{MEDIA_TYPE}\r\nContent-Length: {n}\r\n\r\n").encode()

            def note(kind: str, ok: bool) -> None:
                with lock:
                    counts[kind] = counts.get(kind, 0) + 1
                    if not ok:
                        bad[kind] = bad.get(kind, 0) + 1

            def status_of(reply: bytes) -> int:
                try:
                    return int(reply.split(b" ", 2)[1])
                except (IndexError, ValueError):
                    return 0

            def slow_body() -> None:  # a body that never completes: 408 after --body-timeout
                with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                    s.sendall(head("/segment", 10_000_000) + bytes(100))
                    code = status_of(s.recv(256))
                note("slow-body", code == 408)

            def never_reading() -> None:  # a 4 MiB reply nobody reads: dropped after --send-timeout
                with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                    s.sendall(head("/normalize", len(never_read)) + never_read)
                    time.sleep(3.0)
                note("never-reading", True)

            def disconnecting() -> None:  # a slow tiled request whose client hangs up after 0.2 s
                with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                    s.sendall(head("/segment", len(slow_movie)) + slow_movie)
                    time.sleep(0.2)
                note("disconnecting", True)

            def fast(kind: str, conn: _Conn) -> None:
                if kind == "oversized-by-scale":
                    status, _ = conn.post("/segment", by_scale)
                    note(kind, status == 413)
                elif kind == "nested-json":
                    status, _ = conn.post("/segment", nested)
                    note(kind, status == 400)
                else:  # bad Host (DNS rebinding)
                    status, _ = conn.post("/segment", good[0], {"Host": "evil.example"})
                    note(kind, status == 403)

            def attacker(k: int) -> None:
                rnd, conn = random.Random(100 + k), _Conn(port)
                role = ("slow-body", "never-reading", "disconnecting", "fast", "fast", "fast")[k % 6]
                while not done.is_set():
                    try:
                        if role == "slow-body":
                            slow_body()
                        elif role == "never-reading":
                            never_reading()
                        elif role == "disconnecting":
                            disconnecting()
                            time.sleep(10 * args.attack_pause)  # each one costs the server real work until it hangs up
                        else:
                            fast(rnd.choice(("oversized-by-scale", "nested-json", "bad-host")), conn)
                            time.sleep(args.attack_pause)
                    except (OSError, http.client.HTTPException):
                        note(role, False)

            attackers = ThreadPoolExecutor(args.attackers)
            for k in range(args.attackers):
                attackers.submit(attacker, k)
            t0 = time.perf_counter()
            attacked = valid_load(args.hostile_valid, stop)
            attacked_s = time.perf_counter() - t0
            done.set()
            attackers.shutdown(wait=True)
            time.sleep(3.0)
            metrics = json_get(port, "/metrics")
            alive = srv.proc.poll() is None and json_get(port, "/health")["status"] == "ok"
            cpu_total = (_cpu_seconds(pid) or 0.0) - base_cpu
            peak = _peak_rss(pid)
        statuses = {route: m["status"] for route, m in metrics["routes"].items()}
        five = sum(v for m in statuses.values() for k, v in m.items() if k.startswith("5") and k not in ("503", "504"))
        n_hostile = sum(counts.values())
        n_valid = baseline["served"] + attacked["served"]
        total = n_hostile + attacked["served"] + attacked["busy"] + attacked["failed"]
        print(f"hostile soak: tiny model, {args.size}x{args.size} valid /segment requests from {args.clients} clients "
              f"({args.hostile_valid} per phase), {args.attackers} attacker threads, memory budget {budget_gb:g} GiB, "
              f"torch threads {args.threads}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        print(f"  without attackers: {baseline['served']} served in {base_s:.1f} s, p50 {baseline['p50_ms']:.1f} ms, "
              f"p99 {baseline['p99_ms']:.1f} ms, wrong {baseline['wrong']}, failed {baseline['failed']}")
        print(f"  with attackers:    {attacked['served']} served in {attacked_s:.1f} s, p50 {attacked['p50_ms']:.1f} ms, "
              f"p99 {attacked['p99_ms']:.1f} ms ({attacked['p99_ms'] / baseline['p99_ms']:.2f}x), wrong "
              f"{attacked['wrong']}, failed {attacked['failed']}, 503 {attacked['busy']}")
        print(f"  hostile requests {n_hostile} of {total} in the attacked phase ({100 * n_hostile / max(total, 1):.0f} %): "
              + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
              + f"; unexpected answers {sum(bad.values())} {bad or ''}")
        print(f"  server: {'alive' if alive else 'DOWN'}, 5xx other than 503/504: {five}, peak RSS "
              f"{peak / 2**20:.0f} MiB (budget {budget_gb * 1024:.0f} MiB for requests; peak reserved "
              f"{metrics['memory']['peak_reserved_bytes'] / 2**20:.0f} MiB), CPU {cpu_total:.1f} s of which on "
              f"abandoned work {metrics['cpu_seconds']['abandoned']:.2f} s "
              f"({100 * metrics['cpu_seconds']['abandoned'] / max(cpu_total, 1e-9):.1f} %)")
        print(f"  status counts by route: {statuses}")
        ok = alive and five == 0 and attacked["wrong"] == 0 and baseline["wrong"] == 0 and not bad
        return 0 if ok and n_valid > 0 else 1


def struct_pack(header: bytes) -> bytes:
    import struct

    return struct.pack("<I", len(header)) + header


def json_get(port: int, path: str) -> dict[str, Any]:
    import json

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=1250, help="requests per client in the mixed load")
    ap.add_argument("--sizes", default="40,64,128",
                    help="edges of the small images compared, comma-separated ('': none)")
    ap.add_argument("--size", type=int, default=64, help="edge of the images in the mixed load")
    ap.add_argument("--model", default="nuclei", choices=("nuclei", "tiny"))
    ap.add_argument("--compare-requests", type=int, default=400, help="requests per mode and size in the comparison")
    ap.add_argument("--rounds", type=int, default=4, help="alternating rounds the comparison is split into")
    ap.add_argument("--time-limit", type=float, default=300.0, help="seconds for the mixed load at most")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the servers (and for the reference)")
    ap.add_argument("--crops", type=int, default=4, help="/classify requests carry 1 to this many 3x40x40 crops")
    ap.add_argument("--classify-requests", type=int, default=400, help="/classify requests per mode (0: skip)")
    ap.add_argument("--classifier-widths", default="32,64,128",
                    help="widths of the classifier trained for the /classify comparison")
    ap.add_argument("--hostile", action="store_true", help="the hostile soak (issue 18) instead of the load test")
    ap.add_argument("--hostile-valid", type=int, default=1500, help="--hostile: valid requests per phase")
    ap.add_argument("--attackers", type=int, default=12, help="--hostile: attacker threads (slow-body, "
                    "never-reading, disconnecting, and 3 of 6 sending fast hostile requests)")
    ap.add_argument("--attack-pause", type=float, default=0.01, help="--hostile: pause of a fast attacker (s)")
    ap.add_argument("--budget-gb", type=float, default=1.0, help="--hostile: the server's --max-memory-gb")
    args = ap.parse_args()
    if args.hostile:
        return hostile(args)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]  # "": no /segment comparison

    import httpx
    import torch

    from ijtorch.io.tiff import read_tiff
    from ijtorch.serve._wire import MEDIA_TYPE, decode, encode
    from ijtorch.tasks.segment import segment

    torch.set_num_threads(args.threads)
    image = read_tiff(SHARED / CALIBRATION_IMAGE).data
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        folder = Path(tmp)
        make_tiny_model(folder, image)
        # --batch-wait-ms 0: adaptive batching (dispatch at once when idle); the same flags in both modes
        common = ("--threads", str(args.threads), "--max-request-mb", "1", "--max-queue", "64", "--batch-wait-ms", "0")
        env_models = os.environ.get("IJTORCH_MODELS")
        os.environ["IJTORCH_MODELS"] = str(folder)  # the reference segment() resolves the same names

        # ---- 1. batched vs unbatched, same model, requests, clients and threads, same run
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"batched (--max-batch 8) vs unbatched (--max-batch 1): model {args.model}, {args.clients} clients, "
              f"{args.compare_requests} requests per mode and size in {args.rounds} alternating rounds, "
              f"torch threads {args.threads}, {os.cpu_count()} CPUs, load average {load:.1f}")
        for size in sizes:
            bodies = [encode({"axes": "YX", "model": args.model}, {"image": c}) for c in _crops(image, 16, size)]
            _report(f"/segment {size}x{size}", _compare(folder, common, bodies, args.clients, args.compare_requests,
                                                        args.rounds))
        if args.classify_requests > 0:
            widths = tuple(int(w) for w in args.classifier_widths.split(","))
            model_path = make_tiny_classifier(folder, SHARED, name="cells", items=336, widths=widths)
            cells = load_crops(SHARED)[0]
            rng = np.random.default_rng(0)
            stacks = [cells[np.sort(rng.choice(len(cells), rng.integers(1, args.crops + 1), replace=False))]
                      for _ in range(32)]
            bodies = [encode({"model": "cells"}, {"images": s}) for s in stacks]
            res = _compare(folder, common, bodies, args.clients, args.classify_requests, args.rounds, "/classify",
                           _classify_check(stacks, str(model_path), args.clients))
            _report(f"/classify 1-{args.crops} crops of 3x40x40 (classifier widths {list(widths)}, "
                    f"mean {np.mean([len(s) for s in stacks]):.2f} crops/request)", res)
        if args.requests <= 0:
            return 0

        # ---- 2. mixed load
        crops = _crops(image, 16, args.size)
        expected = [segment(c, "YX", model=args.model, device="cpu").labels for c in crops]
        good = [encode({"axes": "YX", "model": args.model}, {"image": c}) for c in crops]
        malformed = [b"\x00\x01", encode({"axes": "ZYX", "model": args.model}, {"image": crops[0]}),
                     encode({"axes": "YX", "model": "../tiny"}, {"image": crops[0]}),
                     encode({"axes": "YX", "model": args.model, "extra": 1}, {"image": crops[0]}),
                     good[0][:-7]]
        oversized = encode({"axes": "YX", "model": args.model}, {"image": np.zeros((600, 600), np.float32)})
        unknown = encode({"axes": "YX", "model": "nope"}, {"image": crops[0]})
        job_body = encode({"axes": "TYX", "model": args.model}, {"image": np.stack(crops[:4])})
        kinds = ["valid"] * 78 + ["malformed"] * 8 + ["oversized"] * 4 + ["unknown"] * 3 + ["cancel"] * 5 \
            + ["hang-up"] * 2
        stats = {k: 0 for k in ("sent", "ok", "wrong", "failures", "rejected_503")}
        by_kind: dict[str, int] = {}
        latencies: list[float] = []
        lock = threading.Lock()
        headers = {"Content-Type": MEDIA_TYPE}
        with ServerProcess(folder, *common, "--max-batch", "8") as srv:
            deadline = time.monotonic() + args.time_limit

            def client(seed: int, n: int) -> None:
                rnd = random.Random(seed)
                with httpx.Client(base_url=srv.url, timeout=60) as http:
                    for _ in range(n):
                        if time.monotonic() > deadline:
                            return
                        kind = rnd.choice(kinds)
                        t0 = time.perf_counter()
                        ok, wrong = False, False
                        r = None
                        try:
                            if kind == "valid":
                                k = rnd.randrange(len(good))
                                r = http.post("/segment", content=good[k], headers=headers)
                                if r.status_code == 200:
                                    _, arrays = decode(r.content)
                                    ok = True
                                    wrong = not np.array_equal(arrays["labels"], expected[k])
                            elif kind == "malformed":
                                r = http.post("/segment", content=rnd.choice(malformed), headers=headers)
                                ok = r.status_code in (400, 422) and "error" in r.json()
                            elif kind == "oversized":
                                r = http.post("/segment", content=oversized, headers=headers)
                                ok = r.status_code == 413
                            elif kind == "unknown":
                                r = http.post("/segment", content=unknown, headers=headers)
                                ok = r.status_code == 404
                            elif kind == "hang-up":
                                _hang_up(srv.url, good[rnd.randrange(len(good))])
                                ok = True
                            else:
                                r = http.post("/jobs/segment", content=job_body, headers=headers)
                                if r.status_code == 202:
                                    job = r.json()["id"]
                                    c = http.delete(f"/jobs/{job}")
                                    ok = c.status_code in (200, 202)
                        except (httpx.HTTPError, OSError):
                            r, ok = None, False
                        dt = time.perf_counter() - t0
                        with lock:
                            stats["sent"] += 1
                            by_kind[kind] = by_kind.get(kind, 0) + 1
                            latencies.append(dt)
                            if r is not None and r.status_code == 503:
                                stats["rejected_503"] += 1
                            elif ok:
                                stats["ok"] += 1
                            else:
                                stats["failures"] += 1
                            stats["wrong"] += int(wrong)

            # the first tenth of the load is the memory baseline: what a served load keeps for good
            # (the model, torch's cached scratch memory per batch size, allocator arenas per thread)
            first = max(1, args.requests // 10)
            t0 = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                list(pool.map(client, range(args.clients), [first] * args.clients))
            elapsed = time.perf_counter() - t0
            time.sleep(3.0)  # idle: the server gives freed buffers back to the OS within ~2 s
            rss_before = httpx.get(srv.url + "/metrics").json()["rss_bytes"]
            t0 = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                list(pool.map(client, range(args.clients, 2 * args.clients), [args.requests - first] * args.clients))
            elapsed += time.perf_counter() - t0
            time.sleep(3.0)
            metrics = httpx.get(srv.url + "/metrics").json()
            alive = srv.proc.poll() is None and httpx.get(srv.url + "/health").status_code == 200
        if env_models is None:
            os.environ.pop("IJTORCH_MODELS", None)
        else:
            os.environ["IJTORCH_MODELS"] = env_models
        lat = np.array(latencies) * 1000
        print(f"mixed load: {args.clients} clients x up to {args.requests} requests, {args.size}x{args.size} images, "
              f"{elapsed:.1f} s ({'time limit hit' if elapsed >= args.time_limit else 'all sent'})")
        print(f"  sent {stats['sent']} ({', '.join(f'{k} {v}' for k, v in sorted(by_kind.items()))})")
        print(f"  throughput {stats['sent'] / elapsed:.1f} req/s; latency p50 {np.percentile(lat, 50):.1f} ms, "
              f"p99 {np.percentile(lat, 99):.1f} ms")
        print(f"  expected outcome {stats['ok']}, failures {stats['failures']}, wrong answers {stats['wrong']}, "
              f"503 {stats['rejected_503']}; server {'alive' if alive else 'DOWN'}")
        rss_after = metrics["rss_bytes"]
        print(f"  server: batches {metrics['batching']['batches']}, mean batch {metrics['batching']['mean_size']:.2f}, "
              f"jobs {metrics['jobs']}, RSS {rss_before / 2**20:.0f} MiB after the first {first * args.clients} requests, "
              f"{rss_after / 2**20:.0f} MiB after the run ({(rss_after - rss_before) / 2**20:+.0f} MiB)")
    return 0 if stats["failures"] == 0 and stats["wrong"] == 0 and alive else 1


if __name__ == "__main__":
    sys.exit(main())
