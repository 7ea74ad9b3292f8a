"""StarDist side of ``bench_segment.py --vs-stardist``: run by the *peer* interpreter (a separate
virtual environment with ``stardist`` and ``tensorflow-cpu``; it never imports ijtorch).

Usage (``bench_segment.py`` writes the input and reads the output)::

    /tmp/peers-venv/bin/python benchmarks/stardist_peer.py INPUT.npz OUTPUT.json

``INPUT.npz`` holds ``settings`` (a JSON string: ``threads``, ``filters`` (list of
``unet_n_filter_base``), ``train_steps``, ``cache`` (folder for the trained models), ``repeats``,
``nms``), the images to time (``image_0``, ``image_1``, …, raw intensities) with ``candidates_K``
(how many grid points ijtorch's model kept above its probability threshold on image K), and training
pairs (``train_image_K``, ``train_labels_K``).

For each filter base a StarDist2D model with ijtorch's bundled configuration (32 rays, grid 2, U-Net
depth 3) is trained for ``train_steps`` steps on the training pairs (once; kept in ``cache``), so
that its probability and distance maps look like a nuclei model's. Timing on an image then uses the
probability threshold that leaves as many candidates as ijtorch's model had on it (so both NMS see
about the same work) and ``nms`` as the overlap threshold. Per image: seconds of normalisation
(csbdeep's percentile normalisation, as ``segment()`` does its own), of ``predict`` (forward,
dense), of ``_instances_from_prediction`` on those maps (thresholding, NMS, label rendering) and of
``predict_instances`` as users call it (sparse; forward + NMS), best of ``repeats``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def configure_threads(threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def trained_model(filters: int, settings: dict, data: dict):
    """A StarDist2D with ijtorch's bundled configuration, ``filters`` base channels, trained briefly."""
    import numpy as np
    from csbdeep.utils import normalize
    from stardist.models import Config2D, StarDist2D

    name = f"sd_f{filters}_steps{settings['train_steps']}"
    basedir = Path(settings["cache"])
    if (basedir / name / "weights_best.h5").exists():
        return StarDist2D(None, name=name, basedir=str(basedir)), "cached"  # loads weights_best.h5
    conf = Config2D(n_rays=32, grid=(2, 2), n_channel_in=1, unet_n_depth=3, unet_n_filter_base=filters,
                    train_patch_size=(128, 128), train_batch_size=4, train_epochs=1,
                    train_steps_per_epoch=int(settings["train_steps"]), train_tensorboard=False)
    model = StarDist2D(conf, name=name, basedir=str(basedir))
    xs = [normalize(data[k], 1, 99.8).astype(np.float32) for k in sorted(data) if k.startswith("train_image_")]
    ys = [data[k].astype(np.int32) for k in sorted(data) if k.startswith("train_labels_")]
    n_val = max(1, len(xs) // 8)
    t0 = time.perf_counter()
    model.train(xs[n_val:], ys[n_val:], validation_data=(xs[:n_val], ys[:n_val]), epochs=1,
                steps_per_epoch=int(settings["train_steps"]))
    return model, f"trained {settings['train_steps']} steps in {time.perf_counter() - t0:.0f} s"


def prob_threshold_for(prob, grid: int, candidates: int) -> float:
    """The probability threshold above which ``candidates`` grid points remain (as ijtorch's had)."""
    import numpy as np

    values = np.sort(np.asarray(prob).ravel())[::-1]  # StarDist's maps are already on its grid
    if candidates <= 0 or values.size == 0:
        return 0.5
    return float(np.clip(values[min(candidates, values.size) - 1] - 1e-6, 0.01, 0.99))


def best_of(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.split("Usage")[0].strip(), file=sys.stderr)
        print("usage: stardist_peer.py INPUT.npz OUTPUT.json", file=sys.stderr)
        return 2
    import numpy as np

    data = dict(np.load(argv[0], allow_pickle=False))
    settings = json.loads(str(data.pop("settings")))
    configure_threads(int(settings["threads"]))
    import stardist
    import tensorflow as tf
    from csbdeep.utils import normalize

    images = [data[f"image_{k}"] for k in range(sum(1 for key in data if key.startswith("image_")))]
    result = {"stardist": stardist.__version__, "tensorflow": tf.__version__, "threads": settings["threads"],
              "models": []}
    for filters in settings["filters"]:
        model, how = trained_model(int(filters), settings, data)
        rows = []
        model.predict(normalize(images[0][:128, :128], 1, 99.8))  # warm-up: graph building, allocator
        for k, img in enumerate(images):
            t_norm, x = best_of(lambda img=img: normalize(img, 1, 99.8).astype(np.float32), settings["repeats"])
            t_fwd, (prob, dist) = best_of(lambda m=model, x=x: m.predict(x), settings["repeats"])
            pt = prob_threshold_for(prob, 2, int(data[f"candidates_{k}"]))
            nt = float(settings["nms"])
            t_nms, _ = best_of(lambda m=model, x=x, p=prob, d=dist, pt=pt, nt=nt: m._instances_from_prediction(
                x.shape, p, d, prob_thresh=pt, nms_thresh=nt), settings["repeats"])
            t_inst, (labels_pi, _) = best_of(lambda m=model, x=x, pt=pt, nt=nt: m.predict_instances(
                x, prob_thresh=pt, nms_thresh=nt, show_tile_progress=False), settings["repeats"])
            rows.append({"shape": list(img.shape), "normalize_s": t_norm, "forward_s": t_fwd, "nms_s": t_nms,
                         "predict_instances_s": t_inst, "prob_thresh": pt,
                         "candidates": int((prob > pt).sum()), "objects": int(labels_pi.max())})
        result["models"].append({"filters": int(filters), "weights": how, "images": rows})
    Path(argv[1]).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
