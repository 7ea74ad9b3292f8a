"""``bench_segment.py --vs-stardist``: prediction speed of ``segment()`` next to StarDist's
``predict_instances`` on the same images, the same machine and the same thread counts, in one run.

Images: the bundled model's validation images from the shared DSB 2018 nuclei (real fluorescence)
and mosaics of them (1024² and 2048² by default, mirrored tiles of real content). ijtorch side, in
this process: ``segment(image, "YX", model=...)`` as users call it (total), and its parts timed
separately: normalisation, forward pass (``predict_maps``: tiles, network, stitching) and NMS
(``instances_from_maps``: candidates, non-maximum suppression, label rendering). StarDist side:
``benchmarks/stardist_peer.py`` run by a separate interpreter that has ``stardist`` and
``tensorflow-cpu`` (``--stardist-python`` or ``$IJTORCH_STARDIST_PYTHON``; e.g.
``python3 -m venv /tmp/peers-venv && /tmp/peers-venv/bin/pip install stardist tensorflow-cpu``), so
the project's own environment is never touched. The StarDist model has the bundled model's
configuration (32 rays, grid 2, depth 3; 16 base filters like ijtorch's and 32, StarDist's default,
for reference), briefly trained on the shared training images so its maps look like a nuclei
model's, with its probability threshold set per image to leave as many NMS candidates as ijtorch's
model had (see the peer's docstring). Every time is the best of ``--repeats`` runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
PEER_ENV = "IJTORCH_STARDIST_PYTHON"


def bench_images(pairs: list[Any], val_names: list[str] | None, mosaics: tuple[int, ...], big_image: Any,
                 ) -> list[tuple[str, list[np.ndarray]]]:
    """Groups of images to time: the validation images, then one mosaic per size (``big_image``)."""
    val = [p for p in pairs if val_names is None or p.name in set(val_names)]
    groups = [(f"DSB val ({len(val)} img)", [p.image for p in val])]
    groups += [(f"mosaic {s}²", [big_image(val, s)]) for s in mosaics]
    return groups


def best_of(fn: Any, repeats: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def time_ijtorch(model_name: str, images: list[np.ndarray], repeats: int) -> list[dict[str, float]]:
    """Per image: segment() total and its parts (normalize, forward, NMS), candidates and objects."""
    from ijtorch.models.store import load_model
    from ijtorch.tasks.segment import segment

    model = load_model(model_name, device="cpu")
    pt, nt, grid = model.thresholds["prob"], model.thresholds["nms"], int(model.config.get("grid", 1))
    segment(images[0][:128, :128], "YX", model=model_name, device="cpu")  # warm-up: load, allocator
    rows = []
    for img in images:
        t_total, result = best_of(lambda img=img: segment(img, "YX", model=model_name, device="cpu"), repeats)
        t_norm, x = best_of(lambda img=img: model.normalize(img), repeats)
        t_fwd, (prob, dist) = best_of(lambda x=x: model.predict_maps(x, normalize=False), repeats)
        t_nms, _ = best_of(lambda p=prob, d=dist, s=x.shape: model.instances_from_maps(
            p, d, s, prob_threshold=pt, nms_threshold=nt), repeats)
        rows.append({"segment_s": t_total, "normalize_s": t_norm, "forward_s": t_fwd, "nms_s": t_nms,
                     "candidates": int((prob[::grid, ::grid] > pt).sum()), "objects": int(result.n_objects)})
    return rows


def run_peer(python: str, groups: list[tuple[str, list[np.ndarray]]], candidates: list[int], threads: int,
             filters: list[int], train_pairs: list[Any], *, nms: float, train_steps: int, cache: Path,
             repeats: int) -> dict[str, Any]:
    """Run ``stardist_peer.py`` with ``python`` on the same images; its JSON result."""
    images = [im for _, ims in groups for im in ims]
    settings = {"threads": threads, "filters": filters, "train_steps": train_steps, "cache": str(cache),
                "repeats": repeats, "nms": nms}
    arrays: dict[str, Any] = {"settings": np.array(json.dumps(settings))}
    arrays.update({f"image_{k}": im for k, im in enumerate(images)})
    arrays.update({f"candidates_{k}": np.array(c) for k, c in enumerate(candidates)})
    arrays.update({f"train_image_{k:03d}": p.image for k, p in enumerate(train_pairs)})
    arrays.update({f"train_labels_{k:03d}": p.labels for k, p in enumerate(train_pairs)})
    with tempfile.TemporaryDirectory(prefix="ijtorch-bench-") as tmp:
        np.savez(Path(tmp) / "input.npz", **arrays)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TF_CPP_MIN_LOG_LEVEL": "3",
               "CUDA_VISIBLE_DEVICES": ""}
        proc = subprocess.run([python, str(HERE / "stardist_peer.py"), str(Path(tmp) / "input.npz"),
                               str(Path(tmp) / "output.json")], env=env, capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"{python} stardist_peer.py failed (exit {proc.returncode}): {' | '.join(tail)}")
        return json.loads((Path(tmp) / "output.json").read_text())


def _sum(rows: list[dict[str, Any]], key: str) -> float:
    return float(sum(r[key] for r in rows))


def speed_rows(groups: list[tuple[str, list[np.ndarray]]], ij: list[dict], peer: dict | None, threads: int,
               ) -> list[dict[str, Any]]:
    """Table rows: per image group, ijtorch then each StarDist model; s/MP of forward and NMS."""
    rows: list[dict[str, Any]] = []
    start = 0
    for name, ims in groups:
        n = len(ims)
        mp = sum(im.size for im in ims) / 1e6
        mine = ij[start:start + n]
        total_ij = _sum(mine, "segment_s")
        rows.append({"method": f"{name}, {threads} thr: ijtorch segment()", "MP": mp,
                     "forward s/MP": _sum(mine, "forward_s") / mp, "NMS s/MP": _sum(mine, "nms_s") / mp,
                     "s/image": total_ij / n, "candidates": int(_sum(mine, "candidates")),
                     "objects": int(_sum(mine, "objects"))})
        for model in (peer or {}).get("models", []):
            theirs = model["images"][start:start + n]
            total_sd = _sum(theirs, "normalize_s") + _sum(theirs, "predict_instances_s")
            rows.append({"method": f"{name}, {threads} thr: StarDist {model['filters']} filters", "MP": mp,
                         "forward s/MP": _sum(theirs, "forward_s") / mp, "NMS s/MP": _sum(theirs, "nms_s") / mp,
                         "s/image": total_sd / n, "candidates": int(_sum(theirs, "candidates")),
                         "objects": int(_sum(theirs, "objects")), "ijtorch/StarDist": total_ij / total_sd})
        start += n
    return rows


def peer_python(arg: str | None) -> str | None:
    """The StarDist interpreter: ``--stardist-python``, else ``$IJTORCH_STARDIST_PYTHON``, else
    ``/tmp/peers-venv/bin/python`` if it exists."""
    for candidate in (arg, os.environ.get(PEER_ENV), "/tmp/peers-venv/bin/python"):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def main(args: Any, pairs: list[Any], val_names: list[str] | None, train_names: list[str] | None,
         print_table: Any, big_image: Any) -> int:
    import torch

    mosaics = tuple(int(s) for s in str(args.mosaics).split(",") if s)
    groups = bench_images(pairs, val_names, mosaics, big_image)
    python = peer_python(args.stardist_python)
    train = [p for p in pairs if train_names is None or p.name in set(train_names)][: args.stardist_train_images]
    filters = [int(f) for f in str(args.stardist_filters).split(",") if f]
    threads_list = [int(t) for t in str(args.speed_threads).split(",") if t]
    from ijtorch.models.store import load_model

    nms = float(load_model(args.model, device="cpu").thresholds["nms"])
    for threads in threads_list:
        torch.set_num_threads(threads)
        ij = time_ijtorch(args.model, [im for _, ims in groups for im in ims], args.repeats)
        peer, note = None, ""
        if python is None:
            note = (f"StarDist skipped: no peer interpreter (--stardist-python or ${PEER_ENV}; "
                    "python3 -m venv /tmp/peers-venv && /tmp/peers-venv/bin/pip install stardist tensorflow-cpu)")
        else:
            try:
                peer = run_peer(python, groups, [r["candidates"] for r in ij], threads, filters, train, nms=nms,
                                train_steps=args.stardist_steps, cache=Path(args.stardist_cache),
                                repeats=args.repeats)
                note = (f"StarDist {peer['stardist']} / TensorFlow {peer['tensorflow']}; models: "
                        + ", ".join(f"{m['filters']} filters {m['weights']}" for m in peer["models"]))
            except (OSError, RuntimeError, ValueError) as e:
                note = f"StarDist failed: {e}"
        print_table(speed_rows(groups, ij, peer, threads),
                    f"Prediction speed, CPU, {threads} thread(s), model '{args.model}' vs StarDist (same images, "
                    f"same run; best of {args.repeats})")
        print(note)
        print("forward = normalised image -> probability + distance maps (ijtorch: predict_maps; StarDist: "
              "predict); NMS = maps -> label map (ijtorch: instances_from_maps; StarDist: "
              "_instances_from_prediction); s/image = segment() vs normalize + predict_instances; "
              "ijtorch/StarDist = ratio of s/image\n")
    return 0


def add_arguments(ap: Any) -> None:
    ap.add_argument("--vs-stardist", action="store_true",
                    help="prediction speed of segment() vs StarDist predict_instances, side by side")
    ap.add_argument("--stardist-python", default=None,
                    help=f"interpreter with stardist + tensorflow-cpu (default: ${PEER_ENV} or /tmp/peers-venv)")
    ap.add_argument("--stardist-filters", default="16,32", help="StarDist unet_n_filter_base values (comma list)")
    ap.add_argument("--stardist-steps", type=int, default=100, help="training steps of the StarDist models")
    ap.add_argument("--stardist-train-images", type=int, default=40, help="training images for the StarDist models")
    ap.add_argument("--stardist-cache", default=str(Path(tempfile.gettempdir()) / "ijtorch-bench-stardist"),
                    help="folder where the briefly trained StarDist models are kept between runs")
    ap.add_argument("--speed-threads", default="1,2", help="thread counts for both (comma list)")
    ap.add_argument("--mosaics", default="1024,2048", help="sides of the mosaic images (comma list)")
    ap.add_argument("--repeats", type=int, default=2, help="timing: best of this many runs")


if __name__ == "__main__":  # pragma: no cover - run through bench_segment.py
    sys.exit("run: python benchmarks/bench_segment.py --vs-stardist")
