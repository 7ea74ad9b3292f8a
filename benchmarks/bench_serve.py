"""Load test of ``ijtorch serve`` on loopback: throughput, latency, failures and wrong answers.

Starts real server processes on free loopback ports with a tiny deterministic model (see
``tests/integration/_serve_model.py``), then

1. batched vs unbatched: the same valid small-image requests against a server with dynamic
   batching (``--max-batch 8``) and one without (``--max-batch 1``), in this run;
2. mixed load: ``--clients`` threads x ``--requests`` requests each, mixing valid requests
   (every answer compared with in-process ``segment()`` pixel for pixel), malformed bodies
   (expect 4xx), oversized bodies (expect 413), unknown models (expect 404) and segmentation jobs
   that are cancelled right after submission (expect 202, then cancelled or done).

Bounded: stops after the request count or ``--time-limit`` seconds, whichever comes first.

    python3 benchmarks/bench_serve.py --clients 8 --requests 1250
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
from _serve_model import CALIBRATION_IMAGE, make_tiny_model  # noqa: E402
from _serve_util import ServerProcess  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"


def _crops(image: np.ndarray, n: int, size: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    ys = rng.integers(0, image.shape[0] - size, n)
    xs = rng.integers(0, image.shape[1] - size, n)
    return [np.ascontiguousarray(image[y:y + size, x:x + size]) for y, x in zip(ys, xs)]


def _throughput(url: str, crops: list[np.ndarray], clients: int, total: int) -> float:
    import httpx

    from ijtorch.serve._wire import MEDIA_TYPE, encode

    bodies = [encode({"axes": "YX", "model": "tiny"}, {"image": c}) for c in crops]
    counter = iter(range(total))
    lock = threading.Lock()

    def worker(_: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            while True:
                with lock:
                    k = next(counter, None)
                if k is None:
                    return
                r = http.post("/segment", content=bodies[k % len(bodies)], headers={"Content-Type": MEDIA_TYPE})
                r.raise_for_status()

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, range(clients)))
    return total / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=1250, help="requests per client in the mixed load")
    ap.add_argument("--size", type=int, default=64, help="edge of the small images")
    ap.add_argument("--compare-requests", type=int, default=600, help="requests per batched/unbatched run")
    ap.add_argument("--time-limit", type=float, default=240.0, help="seconds for the mixed load at most")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the server (and for the reference)")
    args = ap.parse_args()

    import httpx
    import torch

    from ijtorch.io.tiff import read_tiff
    from ijtorch.serve._wire import MEDIA_TYPE, encode
    from ijtorch.tasks.segment import segment

    torch.set_num_threads(args.threads)
    image = read_tiff(SHARED / CALIBRATION_IMAGE).data
    crops = _crops(image, 16, args.size)
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        folder = Path(tmp)
        model = make_tiny_model(folder, image)
        expected = [segment(c, "YX", model=model, device="cpu").labels for c in crops]
        common = ("--threads", str(args.threads), "--max-request-mb", "1", "--max-queue", "64")

        # ---- 1. batched vs unbatched, same requests, same run
        rates = {}
        for label, batch in (("unbatched", "1"), ("batched", "8")):
            with ServerProcess(folder, *common, "--max-batch", batch) as srv:
                _throughput(srv.url, crops, args.clients, 50)  # warm-up: model load, connections
                rates[label] = _throughput(srv.url, crops, args.clients, args.compare_requests)
                if label == "batched":
                    batching = httpx.get(srv.url + "/metrics").json()["batching"]
        print(f"small images {args.size}x{args.size}, {args.clients} clients, {args.compare_requests} requests each run:")
        print(f"  unbatched {rates['unbatched']:.1f} req/s, batched {rates['batched']:.1f} req/s, "
              f"ratio {rates['batched'] / rates['unbatched']:.2f}x (mean batch {batching['mean_size']:.2f}, "
              f"largest {batching['largest']})")

        # ---- 2. mixed load
        good = [encode({"axes": "YX", "model": "tiny"}, {"image": c}) for c in crops]
        malformed = [b"\x00\x01", encode({"axes": "ZYX", "model": "tiny"}, {"image": crops[0]}),
                     encode({"axes": "YX", "model": "../tiny"}, {"image": crops[0]}),
                     encode({"axes": "YX", "model": "tiny", "extra": 1}, {"image": crops[0]}),
                     good[0][:-7]]
        oversized = encode({"axes": "YX", "model": "tiny"}, {"image": np.zeros((600, 600), np.float32)})
        unknown = encode({"axes": "YX", "model": "nope"}, {"image": crops[0]})
        job_body = encode({"axes": "TYX", "model": "tiny"}, {"image": np.stack(crops[:4])})
        kinds = ["valid"] * 80 + ["malformed"] * 8 + ["oversized"] * 4 + ["unknown"] * 3 + ["cancel"] * 5
        stats = {k: 0 for k in ("sent", "ok", "wrong", "failures", "rejected_503")}
        by_kind: dict[str, int] = {}
        latencies: list[float] = []
        lock = threading.Lock()
        with ServerProcess(folder, *common, "--max-batch", "8") as srv:
            rss_before = httpx.get(srv.url + "/metrics").json()["rss_bytes"]
            deadline = time.monotonic() + args.time_limit

            def client(seed: int) -> None:
                rnd = random.Random(seed)
                with httpx.Client(base_url=srv.url, timeout=60) as http:
                    for _ in range(args.requests):
                        if time.monotonic() > deadline:
                            return
                        kind = rnd.choice(kinds)
                        t0 = time.perf_counter()
                        ok, wrong = False, False
                        headers = {"Content-Type": MEDIA_TYPE}
                        try:
                            if kind == "valid":
                                k = rnd.randrange(len(good))
                                r = http.post("/segment", content=good[k], headers=headers)
                                if r.status_code == 200:
                                    from ijtorch.serve._wire import decode

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
                            else:
                                r = http.post("/jobs/segment", content=job_body, headers=headers)
                                if r.status_code == 202:
                                    job = r.json()["id"]
                                    c = http.delete(f"/jobs/{job}")
                                    ok = c.status_code in (200, 202)
                        except httpx.HTTPError:
                            r = None
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

            t0 = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                list(pool.map(client, range(args.clients)))
            elapsed = time.perf_counter() - t0
            time.sleep(0.5)
            metrics = httpx.get(srv.url + "/metrics").json()
        lat = np.array(latencies) * 1000
        print(f"mixed load: {args.clients} clients x up to {args.requests} requests, {elapsed:.1f} s "
              f"({'time limit hit' if elapsed >= args.time_limit else 'all sent'})")
        print(f"  sent {stats['sent']} ({', '.join(f'{k} {v}' for k, v in sorted(by_kind.items()))})")
        print(f"  throughput {stats['sent'] / elapsed:.1f} req/s; latency p50 {np.percentile(lat, 50):.1f} ms, "
              f"p99 {np.percentile(lat, 99):.1f} ms")
        print(f"  expected outcome {stats['ok']}, failures {stats['failures']}, wrong answers {stats['wrong']}, "
              f"503 {stats['rejected_503']}")
        print(f"  server: batches {metrics['batching']['batches']}, mean batch {metrics['batching']['mean_size']:.2f}, "
              f"jobs {metrics['jobs']}, RSS {rss_before / 2**20:.0f} MiB before, "
              f"{metrics['rss_bytes'] / 2**20:.0f} MiB after")
    return 0 if stats["failures"] == 0 and stats["wrong"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
