"""Import + first prediction of a ~10 MB bioimage.io package, on CPU (issue 22 target: under 5 s).

    OMP_NUM_THREADS=1 python3 benchmarks/bench_bioimageio.py [--size 512] [--base-channels 27]

Builds a CARE-type U-Net (random weights) of about 10 MB of package, exports it with ijtorch's
exporter (no bioimageio.core test, to keep the set-up short), then in a *fresh* Python process
times: ``import_bioimageio`` (reading the rdf, checking and copying the weights; torch is not
imported for a TorchScript package), loading the model (torch import included) and the first
``restore()`` of a SIZE×SIZE image — once through the generic runtime (TorchScript,
as for a package from the zoo) and once as the restored native ijtorch model. Nothing is written
outside a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

CHILD = r"""
import json, sys, time
t0, c0 = time.perf_counter(), time.process_time()
import numpy as np
from ijtorch.bioimageio.package_import import import_bioimageio
from ijtorch.tasks.restore import restore
t1 = time.perf_counter()
res = import_bioimageio(sys.argv[1], name="bench", task=(sys.argv[2] if sys.argv[2] != "native" else None))
t2 = time.perf_counter()
img = np.random.default_rng(0).poisson(200, (int(sys.argv[3]),) * 2).astype(np.uint16)
out = restore(img, "YX", model="bench", device="cpu")
t3, c3 = time.perf_counter(), time.process_time()
print(json.dumps({"kind": res.model_type, "weights": res.weights_format, "python_imports_s": t1 - t0,
                  "import_package_s": t2 - t1, "load_and_first_prediction_s": t3 - t2, "total_s": t3 - t0, "total_cpu_s": c3 - c0,
                  "shape": list(out.restored.shape)}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512, help="edge of the predicted image (default 512)")
    ap.add_argument("--base-channels", type=int, default=27, help="U-Net width (27: about 10 MB of package)")
    args = ap.parse_args()
    import torch

    from ijtorch.bioimageio.export import export_bioimageio
    from ijtorch.models.restoration import RestorationModel
    from ijtorch.models.unet import UNet

    print("load average (1 min) %.1f on %d cores" % (os.getloadavg()[0], os.cpu_count() or 1))
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        env = dict(os.environ, IJTORCH_MODELS=str(tmp_path / "models"),
                   PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "python"), os.environ.get("PYTHONPATH")])),
                   BIOIMAGEIO_CACHE_PATH=str(tmp_path / "bioimageio-cache"))
        os.environ.update(env)
        torch.manual_seed(0)
        RestorationModel(UNet(1, 1, base_channels=args.base_channels, depth=3), {"model_type": "care"}).save(
            tmp_path / "care-model")
        pkg = export_bioimageio(tmp_path / "care-model", tmp_path / "care.zip", validate=False).path
        mb = pkg.stat().st_size / 1e6
        print(f"package: {mb:.1f} MB ({pkg.name}); image {args.size}x{args.size}; torch threads "
              f"{torch.get_num_threads()}")
        print(f"{'path':<28} {'python imports':>15} {'import pkg':>11} {'load + 1st pred':>16} {'total':>8} {'CPU time':>9}")
        for mode in ("restore", "native"):
            (tmp_path / "models").mkdir(exist_ok=True)
            for d in (tmp_path / "models").iterdir():
                import shutil

                shutil.rmtree(d)
            out = subprocess.run([sys.executable, "-c", CHILD, str(pkg), mode, str(args.size)], capture_output=True,
                                 text=True, env=env, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            label = f"{r['kind']} ({r['weights']})"
            print(f"{label:<28} {r['python_imports_s']:>14.2f}s {r['import_package_s']:>10.2f}s "
                  f"{r['load_and_first_prediction_s']:>15.2f}s {r['total_s']:>7.2f}s {r['total_cpu_s']:>8.2f}s")
    print("wall times include waiting for the CPU on a loaded machine; CPU time is the process's own; "
          "load average (1 min) %.1f on %d cores" % (os.getloadavg()[0], os.cpu_count() or 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
