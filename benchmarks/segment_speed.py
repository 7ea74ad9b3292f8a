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

``--bfloat16`` adds a ``segment()`` row with the opt-in bfloat16 convolutions
(``$IJTORCH_CPU_BFLOAT16=1``, CPUs with native bfloat16; see
:func:`ijtorch.models.stardist.network.cpu_bfloat16_enabled`); ``--precision`` first scores float32
and bfloat16 ``segment()`` on held-out images (the bundled model's validation images plus
``--precision-extra`` images of ``nuclei_dsb2018/more``, which it was not trained on): pooled AP, the
images whose labels differ at all, seconds per megapixel.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
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


@contextlib.contextmanager
def cpu_precision(model: Any, bfloat16: bool) -> Iterator[None]:
    """Run ``model`` (a loaded star-convex model) in bfloat16 (``$IJTORCH_CPU_BFLOAT16=1``) or the
    float32 default inside the block; its inference copy is rebuilt on entry and on exit."""
    from ijtorch.models.stardist.network import CPU_BFLOAT16_ENV

    before = os.environ.get(CPU_BFLOAT16_ENV)
    os.environ[CPU_BFLOAT16_ENV] = "1" if bfloat16 else "0"
    model._fast = None
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(CPU_BFLOAT16_ENV, None)
        else:
            os.environ[CPU_BFLOAT16_ENV] = before
        model._fast = None


def time_ijtorch(model_name: str, images: list[np.ndarray], repeats: int, *, bfloat16: bool = False,
                 ) -> list[dict[str, float]]:
    """Per image: segment() total and its parts (normalize, forward, NMS), candidates and objects;
    ``bfloat16``: with the opt-in bfloat16 convolutions."""
    from ijtorch.models.store import load_model

    model = load_model(model_name, device="cpu")
    with cpu_precision(model, bfloat16):
        return _time_ijtorch(model, model_name, images, repeats)


def _time_ijtorch(model: Any, model_name: str, images: list[np.ndarray], repeats: int) -> list[dict[str, float]]:
    from ijtorch.tasks.segment import segment

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
               ij_bf16: list[dict] | None = None) -> list[dict[str, Any]]:
    """Table rows: per image group, ijtorch (float32, then bfloat16 when timed) then each StarDist
    model; s/MP of forward and NMS; ``ijtorch/StarDist`` compares each ijtorch row with StarDist 16."""
    rows: list[dict[str, Any]] = []
    start = 0
    for name, ims in groups:
        n = len(ims)
        mp = sum(im.size for im in ims) / 1e6
        mine_rows = [("ijtorch segment()", ij[start:start + n])]
        if ij_bf16:
            mine_rows.append(("ijtorch segment() bfloat16 (opt-in)", ij_bf16[start:start + n]))
        peers = [(m, m["images"][start:start + n]) for m in (peer or {}).get("models", [])]
        sd16 = next((_sum(t, "normalize_s") + _sum(t, "predict_instances_s") for m, t in peers if m["filters"] == 16),
                    None)
        for label, mine in mine_rows:
            total_ij = _sum(mine, "segment_s")
            rows.append({"method": f"{name}, {threads} thr: {label}", "MP": mp,
                         "forward s/MP": _sum(mine, "forward_s") / mp, "NMS s/MP": _sum(mine, "nms_s") / mp,
                         "s/image": total_ij / n, "candidates": int(_sum(mine, "candidates")),
                         "objects": int(_sum(mine, "objects")),
                         **({"ijtorch/StarDist-16": total_ij / sd16} if sd16 else {})})
        for model, theirs in peers:
            total_sd = _sum(theirs, "normalize_s") + _sum(theirs, "predict_instances_s")
            rows.append({"method": f"{name}, {threads} thr: StarDist {model['filters']} filters", "MP": mp,
                         "forward s/MP": _sum(theirs, "forward_s") / mp, "NMS s/MP": _sum(theirs, "nms_s") / mp,
                         "s/image": total_sd / n, "candidates": int(_sum(theirs, "candidates")),
                         "objects": int(_sum(theirs, "objects")),
                         "ijtorch/StarDist": _sum(ij[start:start + n], "segment_s") / total_sd})
        start += n
    return rows


def held_out_pairs(pairs: list[Any], val_names: list[str] | None, extra: int, seed: int = 0) -> list[Any]:
    """The bundled model's validation images plus ``extra`` images of ``nuclei_dsb2018/more`` (it was
    trained on ``train`` only), chosen with ``seed``."""
    from ijtorch.train.data import load_pairs

    held = [p for p in pairs if val_names is None or p.name in set(val_names)]
    more_dir = HERE.parent.parent / "shared" / "data" / "nuclei_dsb2018" / "more"
    if extra > 0 and more_dir.is_dir():
        more = load_pairs(more_dir)
        pick = np.random.default_rng(seed).choice(len(more), min(extra, len(more)), replace=False)
        held += [more[i] for i in sorted(pick)]
    return held


def precision_rows(model_name: str, pairs: list[Any]) -> list[dict[str, Any]]:
    """``segment()`` in float32 and in bfloat16 on the same held-out images: pooled AP@0.5/0.75,
    images whose labels differ, seconds per megapixel (whole ``segment()``, this run)."""
    from ijtorch.metrics.instance import match_labels
    from ijtorch.models.store import load_model
    from ijtorch.tasks.segment import segment

    model = load_model(model_name, device="cpu")
    mp = sum(p.image.size for p in pairs) / 1e6
    labels: dict[bool, list[np.ndarray]] = {}
    rows = []
    for bfloat16 in (False, True):
        with cpu_precision(model, bfloat16):
            t0 = time.perf_counter()
            labels[bfloat16] = [segment(p.image, "YX", model=model_name, device="cpu").labels for p in pairs]
            seconds = time.perf_counter() - t0
        row: dict[str, Any] = {"method": f"segment() {'bfloat16 (opt-in)' if bfloat16 else 'float32'}",
                               "images": len(pairs), "nuclei": int(sum(int(p.labels.max()) for p in pairs))}
        for t in (0.5, 0.75):
            counts = np.zeros(3, np.int64)
            for p, lab in zip(pairs, labels[bfloat16]):
                m = match_labels(p.labels, lab, iou_threshold=t)
                counts += (m.tp, m.fp, m.fn)
            row[f"AP@{t:g}"] = float(counts[0] / max(counts.sum(), 1))
            row[f"tp/fp/fn@{t:g}"] = "/".join(str(int(c)) for c in counts)
        row["s/MP"] = seconds / mp
        rows.append(row)
    rows[1]["images changed"] = sum(not np.array_equal(a, b) for a, b in zip(labels[False], labels[True]))
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
    if args.precision:
        held = held_out_pairs(pairs, val_names, args.precision_extra)
        print_table(precision_rows(args.model, held),
                    f"float32 vs bfloat16 on {len(held)} held-out DSB images (the bundled model's validation "
                    f"images + {len(held) - len([p for p in held if p.name in set(val_names or [])])} of "
                    "nuclei_dsb2018/more), CPU, same run")
    for threads in threads_list:
        torch.set_num_threads(threads)
        all_images = [im for _, ims in groups for im in ims]
        ij = time_ijtorch(args.model, all_images, args.repeats)
        ij_bf16 = time_ijtorch(args.model, all_images, args.repeats, bfloat16=True) if args.bfloat16 else None
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
        print_table(speed_rows(groups, ij, peer, threads, ij_bf16),
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
    ap.add_argument("--bfloat16", action="store_true",
                    help="--vs-stardist: also time segment() with the opt-in bfloat16 convolutions "
                         "($IJTORCH_CPU_BFLOAT16=1; CPUs with native bfloat16)")
    ap.add_argument("--precision", action="store_true",
                    help="--vs-stardist: first compare float32 and bfloat16 segment() on held-out images (AP, labels)")
    ap.add_argument("--precision-extra", type=int, default=100,
                    help="--precision: images of nuclei_dsb2018/more added to the validation images")


if __name__ == "__main__":  # pragma: no cover - run through bench_segment.py
    sys.exit("run: python benchmarks/bench_segment.py --vs-stardist")
