"""GPU check: does ``configs/default.yaml``'s training run on this GPU, and how fast?

Why: the default config is made for one GPU (mixed precision, optional XLA, MirroredStrategy)
but the kit was developed on CPUs. This script is the first thing to run on a GPU machine
(after ``make setup-gpu``): it needs no dataset and stops in a few minutes.

What it does:

1. checks that TensorFlow sees a GPU (exit status 2 and one ``error:`` line if not, unless
   ``--allow-cpu``);
2. trains the default config's network, built and compiled as ``cellseg.train.trainer`` does
   (``make_strategy``, ``build_model``, AdamW + warm-up cosine, ``compile_kwargs``,
   ``TrainBatches`` of augmented crops), on synthetic images (:mod:`cellseg.data.synthetic`)
   for a few steps in three modes: float32, mixed_float16, mixed_float16 + XLA
   (``jit_compile``). The first epoch (tracing, XLA compilation) is timed apart from the
   second (steady state);
3. reports images per second and peak GPU memory
   (``tf.config.experimental.get_memory_info``) per mode;
4. segments a synthetic image of ``--segment-mp`` megapixels with
   ``cellseg.infer.segment_images.run_segment`` (what ``segment.py`` runs; config TTA and
   heads) using the float32 model, after a warm-up image: seconds per megapixel;
5. estimates one full-data fold: 606 training images x ``train.epochs`` at the fastest
   mode's rate, and the config's own epoch (``steps_per_epoch`` x ``batch_size`` crops) x
   ``train.epochs``; per-epoch validation scoring is not included.

Writes ``bench/results/gpu.md`` and ``gpu.json`` (date, GPU, versions, command). Without a
GPU, ``--allow-cpu`` runs the same code at tiny sizes (a smoke test) and writes
``gpu_cpu_smoke.{md,json}`` instead, so CPU figures never replace GPU ones.

Usage (on the GPU machine; < 8 minutes with the defaults):
    python bench/gpu_check.py
    python bench/gpu_check.py --allow-cpu --out /tmp/x   # no GPU: tiny sizes, smoke test
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import common  # noqa: E402
from cellseg.cli import OneLineErrorParser  # noqa: E402

NAME = "gpu"
FULL_DATA_IMAGES = 606  # training images of the competition's train.csv
MODES = ("float32", "mixed_float16", "mixed_float16+xla")
#: --allow-cpu without a GPU: small enough for two CPU cores in about a minute.
TINY = {"widths": "8,16,32", "crop": 96, "batch_size": 2, "steps": 3, "segment_mp": 0.1,
        "n_images": 4}
GPU_DEFAULTS = {"widths": "", "crop": 0, "batch_size": 0, "steps": 20, "segment_mp": 4.0,
                "n_images": 8}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = OneLineErrorParser(description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(common.REPO / "configs" / "default.yaml"))
    p.add_argument("--allow-cpu", action="store_true",
                   help="run without a GPU at tiny sizes (smoke test; writes gpu_cpu_smoke.*)")
    p.add_argument("--steps", type=int, help="timed training steps per mode "
                   "(default: 20 on a GPU, 3 with --allow-cpu)")
    p.add_argument("--batch-size", type=int, help="default: train.batch_size (2 on CPU)")
    p.add_argument("--crop", type=int, help="training crop, default augment.crop_size")
    p.add_argument("--widths", help="comma-separated model widths (default: the config's)")
    p.add_argument("--segment-mp", type=float, help="megapixels of the segment test image "
                   "(default 4 on a GPU, 0.1 with --allow-cpu)")
    p.add_argument("--modes", default=",".join(MODES),
                   help=f"comma-separated subset of {','.join(MODES)}")
    p.add_argument("--out", help="results folder (default bench/results)")
    args = p.parse_args(argv)
    bad = [m for m in args.modes.split(",") if m not in MODES]
    if bad:
        p.error(f"--modes: unknown {bad}; choose from {list(MODES)}")
    for name in ("steps", "batch_size", "crop"):
        v = getattr(args, name)
        if v is not None and v < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.segment_mp is not None and not 0 < args.segment_mp <= 64:
        p.error("--segment-mp must be in (0, 64]")
    return args


def gpu_info() -> tuple[list[Any], str]:
    """Physical GPUs and the first one's name ('' without a GPU)."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return [], ""
    try:
        details = tf.config.experimental.get_device_details(gpus[0])
        name = str(details.get("device_name") or gpus[0].name)
    except Exception:  # noqa: BLE001 - the name is only for the report
        name = gpus[0].name
    return gpus, name


def _memory(device: str, reset: bool = False) -> float | None:
    """Peak memory of ``device`` in GiB (None where TF does not track it, e.g. CPU)."""
    import tensorflow as tf

    try:
        if reset:
            tf.config.experimental.reset_memory_stats(device)
            return None
        return tf.config.experimental.get_memory_info(device)["peak"] / 2**30
    except (ValueError, RuntimeError):
        return None


def make_config(args: argparse.Namespace, sizes: dict[str, Any], out: Path) -> Any:
    from cellseg.config import load_config

    overrides = [f"output_dir={out / 'output'}", "name=gpu_check",
                 f"data.root={out / 'data'}", f"train.steps_per_epoch={sizes['steps']}"]
    if sizes["widths"]:
        overrides.append(f"model.widths=[{sizes['widths']}]")
    if sizes["crop"]:
        overrides.append(f"augment.crop_size={sizes['crop']}")
    if sizes["batch_size"]:
        overrides.append(f"train.batch_size={sizes['batch_size']}")
    return load_config(args.config, overrides)


def samples(cfg: Any, n_images: int) -> list[Any]:
    """Training samples of ``n_images`` synthetic images, as the trainer loads them."""
    from cellseg.data.data_root import TrainData
    from cellseg.data.synthetic import make_dataset
    from cellseg.train.batches import load_samples

    make_dataset(cfg.data.root, n_train=n_images, n_test=0, seed=5)
    data = TrainData(cfg.data.root)
    return load_samples(data, list(data.ids), Path(cfg.data.root) / ".cache",
                        desc="synthetic images", max_radius=cfg.train.border_radius_max,
                        n_targets=cfg.model.n_targets)


def train_mode(cfg: Any, train_samples: list[Any], mode: str, device: str | None
               ) -> tuple[dict[str, Any], Any]:
    """A few steps of training in ``mode``; the measurements and the model."""
    import keras

    from cellseg.model.network import build_model, output_names
    from cellseg.train.batches import TrainBatches
    from cellseg.train.distribute import make_strategy
    from cellseg.train.trainer import compile_model

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32" if mode == "float32" else
                                            "mixed_float16")
    if device:
        _memory(device, reset=True)
    steps, batch = cfg.train.steps_per_epoch, cfg.train.batch_size
    times: list[float] = []

    class _Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.t0)

    try:
        keras.utils.set_random_seed(cfg.seed)
        strategy = make_strategy(cfg)
        with strategy.scope():
            model = build_model(cfg.model, name=f"gpu_check_{mode.replace('+', '_')}")
            compile_model(model, cfg, jit_compile=mode.endswith("xla"))
        batches = TrainBatches(train_samples, cfg, output_names(model), batch_size=batch,
                               steps=steps, seed=cfg.seed)
        hist = model.fit(batches, epochs=2, callbacks=[_Clock()], verbose=0)
        loss = float(hist.history["loss"][-1])
    finally:
        keras.mixed_precision.set_global_policy(previous)
    peak = _memory(device) if device else None
    result = {"mode": mode, "steps": steps, "batch_size": batch,
              "crop": cfg.augment.crop_size, "first_epoch_s": times[0],
              "steady_epoch_s": times[1], "images_per_s": steps * batch / times[1],
              "peak_memory_gib": peak, "final_loss": loss,
              "replicas": strategy.num_replicas_in_sync}
    return result, model


def segment_speed(cfg: Any, model: Any, megapixels: float, out: Path) -> dict[str, Any]:
    """``run_segment`` seconds per megapixel on a synthetic image (after a warm-up image)."""
    import math

    import cv2
    import numpy as np

    from cellseg.config import save_config
    from cellseg.data.synthetic import make_image
    from cellseg.infer.ensemble import FoldEnsemble
    from cellseg.infer.segment_images import run_segment

    exp_dir = Path(cfg.output_dir) / cfg.name
    (exp_dir / "fold0").mkdir(parents=True, exist_ok=True)
    model.save(exp_dir / "fold0" / "best.keras")
    save_config(cfg, exp_dir / "fold0" / "config.yaml")
    (exp_dir / "fold0" / "result.json").write_text("{}")  # a finished fold for the loader
    w = round(math.sqrt(megapixels * 1e6 * 4 / 3))
    h = round(megapixels * 1e6 / w)
    img, _ = make_image("shsy5y", np.random.default_rng(1), h, w)
    files = []
    for i in range(2):
        f = out / f"segment_in_{i}.png"
        cv2.imwrite(str(f), img)
        files.append(f)
    ens = FoldEnsemble.load(cfg, exp_dir, warn_untuned=False)
    run_segment(ens, files[:1], out / "segment_warmup", progress=False)
    t0 = time.perf_counter()
    records = run_segment(ens, files[1:], out / "segment_timed", progress=False)
    wall = time.perf_counter() - t0
    status = getattr(records[0], "status", "?") if records else "?"
    return {"height": h, "width": w, "megapixels": h * w / 1e6, "wall_s": wall,
            "s_per_megapixel": wall / (h * w / 1e6), "tta": list(ens.tta),
            "heads": ens.heads, "status": status}


def fold_estimate(cfg: Any, full_cfg: Any, images_per_s: float) -> dict[str, Any]:
    """Training time of one fold on the full data at ``images_per_s``."""
    epochs = full_cfg.train.epochs
    config_images = full_cfg.train.steps_per_epoch * full_cfg.train.batch_size
    return {"epochs": epochs, "images_per_s": images_per_s,
            "full_data_h": FULL_DATA_IMAGES * epochs / images_per_s / 3600,
            "config_epoch_images": config_images,
            "config_epochs_h": config_images * epochs / images_per_s / 3600}


def markdown(report: dict[str, Any]) -> str:
    r = report["results"]
    rows = [[m["mode"], m["batch_size"], m["crop"], m["steps"], m["first_epoch_s"],
             m["steady_epoch_s"], m["images_per_s"],
             "n/a" if m["peak_memory_gib"] is None else m["peak_memory_gib"], m["final_loss"]]
            for m in r["training"]]
    body = [f"Device: **{r['device']}**" + (" (CPU smoke test at tiny sizes: not GPU "
                                            "figures)" if r["cpu_smoke"] else ""), "",
            "## Training (synthetic images, the trainer's model, compile and batches)", "",
            common.markdown_table(["mode", "batch", "crop", "steps", "1st epoch s",
                                   "steady epoch s", "images/s", "peak GiB", "loss"], rows),
            ""]
    for m in r.get("failed", []):
        body.append(f"- {m['mode']} failed: {m['error']}")
    s = r.get("segment")
    if s:
        body += ["## Segment (run_segment, float32 model, config TTA and heads)", "",
                 (f"{s['height']} x {s['width']} px ({s['megapixels']:.2f} MP), TTA "
                  f"{','.join(s['tta'])}, heads {s['heads']}: **{s['s_per_megapixel']:.2f} s "
                  f"per megapixel** ({s['wall_s']:.1f} s, status {s['status']})."), ""]
    e = r.get("fold_estimate")
    if e:
        body += ["## One full-data fold (training only, fastest mode)", "",
                 (f"- {FULL_DATA_IMAGES} images x {e['epochs']} epochs at "
                  f"{e['images_per_s']:.1f} images/s: **{e['full_data_h']:.2f} h**"),
                 (f"- the config's epoch ({e['config_epoch_images']} crops) x {e['epochs']} "
                  f"epochs: **{e['config_epochs_h']:.2f} h**"), ""]
    return "\n".join(body)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = common.start_info()
    import tensorflow as tf

    from cellseg.config import load_config

    gpus, gpu_name = gpu_info()
    if not gpus and not args.allow_cpu:
        print("error: TensorFlow sees no GPU (tf.config.list_physical_devices('GPU') is "
              "empty); install the GPU build with `make setup-gpu`, check nvidia-smi, or "
              "pass --allow-cpu for a CPU smoke test", file=sys.stderr)
        return 2
    cpu_smoke = not gpus
    sizes = dict(TINY if cpu_smoke else GPU_DEFAULTS)
    for key in ("steps", "batch_size", "crop", "widths", "segment_mp"):
        if getattr(args, key) is not None:
            sizes[key] = getattr(args, key)
    for g in gpus:
        try:
            tf.config.experimental.set_memory_growth(g, True)  # peak = what the run needed
        except RuntimeError:
            pass
    device = "GPU:0" if gpus else None
    out_dir = Path(args.out) if args.out else common.RESULTS_DIR
    name = "gpu_cpu_smoke" if cpu_smoke else NAME
    full_cfg = load_config(args.config)
    results: dict[str, Any] = {"device": gpu_name or "CPU (no GPU visible)",
                               "cpu_smoke": cpu_smoke, "training": [], "failed": []}
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = Path(tmp)
        cfg = make_config(args, sizes, work)
        train_samples = samples(cfg, sizes["n_images"])
        f32_model = None
        for mode in args.modes.split(","):
            print(f"training: {mode} ...", flush=True)
            try:
                res, model = train_mode(cfg, train_samples, mode, device)
            except Exception as exc:  # noqa: BLE001 - a mode that fails is a finding
                msg = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
                results["failed"].append({"mode": mode, "error": msg})
                print(f"  failed: {msg}", flush=True)
                continue
            print(f"  {res['images_per_s']:.1f} images/s, peak "
                  f"{res['peak_memory_gib'] if res['peak_memory_gib'] is not None else 'n/a'}"
                  f" GiB", flush=True)
            results["training"].append(res)
            if mode == "float32":
                f32_model = model
        if f32_model is not None:
            print("segment ...", flush=True)
            results["segment"] = segment_speed(cfg, f32_model, sizes["segment_mp"], work)
        if results["training"] and not cpu_smoke:  # tiny CPU sizes would mislead
            best = max(r["images_per_s"] for r in results["training"])
            results["fold_estimate"] = fold_estimate(cfg, full_cfg, best)
    params = {**sizes, "config": args.config, "modes": args.modes}
    notes = [("Synthetic images (cellseg.data.synthetic), so no dataset is needed; speed "
              "depends on image size and crop, not content."),
             ("images/s: steady-state second epoch; the first includes tracing and XLA "
              "compilation."),
             ("Fold estimate: training steps only (no per-epoch validation scoring, OOF maps or "
              "data loading before training).")]
    if cpu_smoke:
        notes.insert(0, "No GPU was visible: CPU smoke test at tiny sizes (model widths "
                     f"{sizes['widths']}); the figures say nothing about a GPU.")
    report = common.make_report(name, params, results, notes=notes, started=started,
                                extra_packages=("tensorflow-cpu", "tf2onnx", "nvidia-cudnn-cu12"))
    report["gpu"] = gpu_name or None
    json_path, md_path = common.write_results(name, report, markdown(report), out_dir,
                                              title="GPU check" + (" (CPU smoke test)"
                                                                   if cpu_smoke else ""))
    print(f"wrote {md_path} and {json_path}")
    return 0 if results["training"] and not results["failed"] else 1


if __name__ == "__main__":
    sys.exit(main())
