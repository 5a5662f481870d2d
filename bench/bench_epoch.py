"""Benchmark: where a training epoch's time goes (issue 10 item 7, "epochs per minute").

Why: on the 2-core machine an epoch of ``train.py`` was reported to cost 2-3 times the sum of
its training steps. This script measures, in one process and interleaved (A, B, C, A, B,
C, ...: the machine is shared, so only comparisons made in the same run mean anything):

(a) ``steps``: N ``model.train_on_batch`` calls on pre-made batches (the cost of the steps);
(b) ``make``: making those N batches with ``TrainBatches.__getitem__`` (serial, main thread);
(c) ``fit``: one Keras ``fit`` epoch of N steps on ``TrainBatches`` exactly as ``train_fold``
    sets it up (``workers`` from the config, progress bar on, no validation);
(d) the per-epoch ``FoldMonitor`` work: ``last.keras`` checkpoint, history/state files, the
    curves PNG, and on scored epochs validation plus the ``best.keras`` checkpoint; both the
    parts and the real ``FoldMonitor.on_epoch_end`` (unscored and scored epoch);
(e) variants of (c): ``TrainBatches`` workers 1 (no enqueuer threads: tf.data runs the
    generator), OpenCV limited to 1 thread (``cv2.setNumThreads(1)``) while the workers run,
    a faster foreground crop (what-if for ``cellseg.train.augment``: :func:`fast_crop_class`; also
    for (b), checked to give identical batches); and, with ``--tf-threads``, TensorFlow
    intra/inter-op thread pools (these must be set before TensorFlow starts, so each setting
    runs in its own child process, alternating).

Every phase records wall time and the process CPU time (user, sys: ``os.times``, all
threads); inside ``fit`` the CPU of the batch-making calls (``time.thread_time`` in the worker
threads) and of the main thread are split out; the rest is TensorFlow's threads (and
OpenCV's).

Data: a synthetic data root from ``cellseg.data.synthetic.make_dataset`` in a temporary folder
(``--images`` images of 520 x 704), or ``--data-dir`` (a competition-format root; the first
``--images`` ids). Model, optimizer, losses and batches are built as ``train_fold`` builds
them from ``--config`` (default ``configs/demo.yaml``); ``configs/real_cpu.yaml`` has the same
model, crops and batch (checked), so its per-step costs are the same and its epoch is
estimated from them with its own steps, ``score_every`` and validation set size.

Prints tables and writes ``bench/results/epoch.{md,json}`` (``--tf-threads``:
``epoch_tf_threads.{md,json}``) atomically, with date, machine, load average and command.

Usage:
    python bench/bench_epoch.py [--steps 20] [--repeats 2] [--images 16] [--data-dir DIR]
                                [--config configs/demo.yaml] [--tf-threads] [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.quiet_tensorflow()

REAL_CPU = common.REPO / "configs" / "real_cpu.yaml"
# The real labelled subset (40 images, 3 folds) validates ~13 images per fold; real_cpu
# scores the whole validation fold (max_val_images: 0).
REAL_CPU_VAL_IMAGES = 13
TF_SETTINGS = ((0, 0), (1, 1), (1, 2), (2, 1))  # (intra, inter); 0 = TensorFlow's default


# ------------------------------------------------------------------------------ measuring
def _snap() -> tuple[float, float, float]:
    t = os.times()
    return time.perf_counter(), t.user, t.system


class Meter:
    """Wall, user and sys seconds of the process between ``start`` and ``stop``, and the
    1-min load average at both ends."""

    def __init__(self) -> None:
        self.t0 = _snap()
        self.load0 = common.load_average()

    def stop(self) -> dict[str, float]:
        t1 = _snap()
        loads = [x for x in (self.load0, common.load_average()) if x is not None]
        return {"wall_s": t1[0] - self.t0[0], "user_s": t1[1] - self.t0[1],
                "sys_s": t1[2] - self.t0[2],
                "load": statistics.mean(loads) if loads else float("nan")}


def _batches_class():
    from cellseg.train.batches import TrainBatches

    class MeteredBatches(TrainBatches):
        """``TrainBatches`` that adds up the CPU time (per thread) of its ``__getitem__``
        calls."""

        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.cpu_s = 0.0
            self.calls = 0
            self._lock = threading.Lock()

        def __getitem__(self, index: int):
            t0 = time.thread_time()
            out = super().__getitem__(index)
            dt = time.thread_time() - t0
            with self._lock:
                self.cpu_s += dt
                self.calls += 1
            return out

    return MeteredBatches


def _epoch_meter(batches):
    import keras

    class EpochMeter(keras.callbacks.Callback):
        """Wall/CPU of one epoch (``on_epoch_begin`` .. ``on_epoch_end``, as ``FoldMonitor``
        times ``epoch_s``), the batch-making CPU and the main thread's CPU within it."""

        def on_epoch_begin(self, epoch: int, logs=None) -> None:
            batches.cpu_s, batches.calls = 0.0, 0
            self.main0 = time.thread_time()
            self.meter = Meter()

        def on_epoch_end(self, epoch: int, logs=None) -> None:
            self.result = self.meter.stop()
            self.result["main_thread_cpu_s"] = time.thread_time() - self.main0
            self.result["pipeline_cpu_s"] = batches.cpu_s
            self.result["batches_made"] = batches.calls
            self.logs = dict(logs or {})

    return EpochMeter()


def fast_crop_class():
    """What-if for ``cellseg.train.augment`` (not used by the project): albumentations'
    ``CropNonEmptyMaskIfExists`` finds its foreground by summing the H x W x C target over
    channels (a reduction over a length-2 axis: ~7 ms for 520 x 704) and ``argwhere`` on the
    full image, once per crop; this subclass draws the same crop with the same random calls
    from a per-channel ``!= 0`` OR and ``flatnonzero``."""
    import albumentations as A
    import numpy as np

    class FastCropNonEmptyMaskIfExists(A.CropNonEmptyMaskIfExists):
        def get_params_dependent_on_data(self, params, data):
            mask = data.get("mask")
            if mask is None or self.ignore_values is not None \
                    or self.ignore_channels is not None:
                return super().get_params_dependent_on_data(params, data)
            h, w = mask.shape[:2]
            if self.height > h or self.width > w:
                return super().get_params_dependent_on_data(params, data)
            if mask.ndim == 3:
                fg = mask[..., 0] != 0
                for c in range(1, mask.shape[-1]):
                    fg |= mask[..., c] != 0
            else:
                fg = mask != 0
            idx = np.flatnonzero(fg)
            if idx.size:
                # random.choice(seq) is seq[randbelow(len(seq))]: same draw as on argwhere
                y, x = divmod(int(idx[self.py_random.choice(range(idx.size))]), w)
                x_min = np.clip(x - self.py_random.randint(0, self.width - 1), 0, w - self.width)
                y_min = np.clip(y - self.py_random.randint(0, self.height - 1), 0,
                                h - self.height)
            else:
                x_min = self.py_random.randint(0, w - self.width)
                y_min = self.py_random.randint(0, h - self.height)
            return {"crop_coords": (x_min, y_min, x_min + self.width, y_min + self.height)}

    return FastCropNonEmptyMaskIfExists


@contextlib.contextmanager
def fast_foreground_crop(enabled: bool = True):
    """Augmenters built inside the block use :func:`fast_crop_class` (what-if)."""
    from cellseg.train import augment

    old = augment.A.CropNonEmptyMaskIfExists
    if enabled:
        augment.A.CropNonEmptyMaskIfExists = fast_crop_class()
    try:
        yield
    finally:
        augment.A.CropNonEmptyMaskIfExists = old


class Bench:
    """The model, data and helpers of one measuring process."""

    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        import keras

        from cellseg.config import load_config
        from cellseg.data.data_root import TrainData
        from cellseg.model.losses import compile_kwargs
        from cellseg.model.network import build_model, output_names
        from cellseg.train.batches import load_samples
        from cellseg.model.schedules import WarmupCosine
        from cellseg.train.trainer import classifier_probs, train_cell_type_classifier

        self.tmp = tmp
        self.steps = args.steps
        root = Path(args.data_dir) if args.data_dir else tmp / "data"
        self.cfg = load_config(args.config, [f"data.root={root}",
                                             f"output_dir={tmp / 'output'}"])
        cfg = self.cfg
        data = TrainData(root)
        ids = sorted(data.ids)[: args.images]
        n_val = cfg.train.max_val_images or 8
        if len(ids) < n_val + 2:
            raise SystemExit(f"error: need at least {n_val + 2} images, found {len(ids)}")
        cache = tmp / "cache"
        radius = cfg.train.border_radius_max
        self.train_samples = load_samples(data, ids[n_val:], cache, desc="train images",
                                          max_radius=radius)
        self.val_samples = load_samples(data, ids[:n_val], cache, keep_instances=True,
                                        max_radius=radius, desc="val images")
        self.classifier = train_cell_type_classifier(self.train_samples, cfg.seed)
        self.type_probs = classifier_probs(self.classifier, self.val_samples)
        keras.utils.set_random_seed(cfg.seed)
        if cfg.train.mixed_precision:
            keras.mixed_precision.set_global_policy("mixed_float16")
        steps = cfg.train.steps_per_epoch
        self.model = build_model(cfg.model, name="bench_epoch")
        schedule = WarmupCosine(cfg.train.learning_rate, cfg.train.warmup_epochs * steps,
                                cfg.train.epochs * steps)
        self.model.compile(optimizer=keras.optimizers.AdamW(learning_rate=schedule,
                                                            weight_decay=cfg.train.weight_decay),
                           jit_compile=cfg.train.xla, **compile_kwargs(self.model, cfg.train))
        self.names = output_names(self.model)
        self.epoch = 0  # fit epochs run so far (each fit call runs one)
        self.monitor_epoch = 0

    def batches(self, workers: int | None = None, steps: int | None = None):
        """Batches of the next epoch (fold 0's seed, as train_fold)."""
        batches = _batches_class()(self.train_samples, self.cfg, self.names,
                                   batch_size=self.cfg.train.batch_size,
                                   steps=steps or self.steps, workers=workers,
                                   seed=self.cfg.seed)
        batches.epoch = self.epoch
        return batches

    # (b)
    def make(self, fast_crop: bool = False) -> tuple[dict[str, float], list]:
        src = self.batches(workers=1)
        with fast_foreground_crop(fast_crop):
            meter = Meter()
            made = [src[i] for i in range(self.steps)]
            return meter.stop(), made

    # (a)
    def train_steps(self, made: list) -> dict[str, float]:
        meter = Meter()
        for x, y in made:
            self.model.train_on_batch(x, y)
        return meter.stop()

    # (c), (e)
    def fit_epoch(self, workers: int | None = None, cv2_threads: int | None = None,
                  steps: int | None = None, fast_crop: bool = False) -> dict[str, float]:
        import cv2

        batches = self.batches(workers=workers, steps=steps)
        meter = _epoch_meter(batches)
        old = cv2.getNumThreads()
        if cv2_threads is not None:
            cv2.setNumThreads(cv2_threads)
        try:
            with contextlib.redirect_stdout(io.StringIO()), fast_foreground_crop(fast_crop):
                # the progress bar on, as in train.py
                self.model.fit(batches, epochs=self.epoch + 1, initial_epoch=self.epoch,
                               callbacks=[meter], verbose="auto")
        finally:
            cv2.setNumThreads(old)
        self.epoch += 1
        self.last_logs = meter.logs
        return meter.result

    # (d)
    def monitor_parts(self) -> dict[str, dict[str, float]]:
        """The FoldMonitor's per-epoch work, part by part, then its real ``on_epoch_end``
        for an unscored and a scored epoch (each scored epoch counted as an improvement, so
        it writes ``best.keras`` too: the dearer case)."""
        import pandas as pd

        from cellseg import fileio
        from cellseg.viz import plot_curves
        from cellseg.train.monitor import FoldMonitor, validate_images

        fold_dir = self.tmp / "output" / "fold0"
        fold_dir.mkdir(parents=True, exist_ok=True)
        out: dict[str, dict[str, float]] = {}
        state: dict[str, Any] = {"epoch": 0, "best_score": -1.0, "best_epoch": -1, "wait": 0}
        history = getattr(self, "history", [])
        monitor = FoldMonitor(self.cfg, fold_dir, self.val_samples, state, history, write=True,
                              type_probs=self.type_probs, eval_model=self.model)
        monitor.set_model(self.model)

        meter = Meter()
        monitor._save(fold_dir / "part_last.keras")
        out["save_checkpoint"] = meter.stop()
        meter = Meter()
        frame = pd.DataFrame(history or [{"epoch": 0, "loss": 1.0}])
        with fileio.atomic_path(fold_dir / "part_history.csv") as tmp:
            frame.to_csv(tmp, index=False)
        fileio.write_text(fold_dir / "part_state.json", json.dumps(state, indent=2))
        out["history_state"] = meter.stop()
        meter = Meter()
        plot_curves(frame, fold_dir / "part_curves.png", title="bench")
        out["curves_png"] = meter.stop()
        meter = Meter()
        validate_images(self.model, self.val_samples, self.cfg, heads="mean",
                        type_probs=self.type_probs)
        out["validation"] = meter.stop()
        out["validation"]["images"] = len(self.val_samples)

        every = max(self.cfg.train.score_every, 1)
        for kind in ("unscored", "scored"):
            epoch = self.monitor_epoch
            while ((epoch + 1) % every == 0) != (kind == "scored"):
                epoch += 1
            state["best_score"] = -1.0
            logs = {k: float(v) for k, v in getattr(self, "last_logs", {}).items()}
            monitor.on_epoch_begin(epoch)
            meter = Meter()
            with contextlib.redirect_stdout(io.StringIO()):
                monitor.on_epoch_end(epoch, logs)
            out[f"on_epoch_end_{kind}"] = meter.stop()
            self.monitor_epoch = epoch + 1
        self.history = history
        return out

    def warm_up(self, monitor: bool = True) -> None:
        """Trace the train step for both input paths (numpy batches, the tf.data pipeline
        of fit) and the validation forward pass; pay matplotlib's and the checkpoint
        writer's first-call costs."""
        import pandas as pd

        from cellseg.viz import plot_curves
        from cellseg.train.monitor import validate_images

        steps = self.steps
        self.steps = 2
        _, made = self.make()
        self.train_steps(made)
        self.fit_epoch(steps=2)
        self.steps = steps
        if monitor:
            validate_images(self.model, self.val_samples[:1], self.cfg,
                            type_probs=self.type_probs)
            plot_curves(pd.DataFrame([{"epoch": 0, "loss": 1.0}]), self.tmp / "warm.png")
            self.model.save(self.tmp / "warm.keras")


# ------------------------------------------------------------------------------ running
FIT_VARIANTS: dict[str, dict[str, Any]] = {
    "fit (as train.py)": {},
    "fit, workers 1": {"workers": 1},
    "fit, cv2 1 thread": {"cv2_threads": 1},
    "fit, fast fg crop (what-if)": {"fast_crop": True},
}


def measure(args: argparse.Namespace, variants: dict[str, dict[str, Any]],
            with_monitor: bool = True) -> dict[str, Any]:
    """Warm up, then ``args.repeats`` rounds of: make, steps, each fit variant, monitor;
    fit variants in reversed order on odd rounds (so drift in the load favours none)."""
    import cv2
    import numpy as np

    runs: dict[str, list[dict[str, float]]] = {}

    def add(name: str, value: dict[str, float]) -> None:
        runs.setdefault(name, []).append(value)
        print(f"  {name:<38} wall {value['wall_s']:6.2f} s  user {value['user_s']:6.2f}  "
              f"sys {value['sys_s']:5.2f}  load {value['load']:.2f}", flush=True)

    with tempfile.TemporaryDirectory(prefix="bench_epoch_") as tmp_name:
        tmp = Path(tmp_name)
        if not args.data_dir:
            from cellseg.data.synthetic import make_dataset

            make_dataset(tmp / "data", n_train=args.images, n_test=0, seed=0)
        t0 = time.perf_counter()
        bench = Bench(args, tmp)
        bench.warm_up(monitor=with_monitor)
        warm_s = time.perf_counter() - t0
        print(f"set-up and warm-up: {warm_s:.0f} s (cv2 threads {cv2.getNumThreads()})",
              flush=True)
        names = list(variants)
        for r in range(args.repeats):
            print(f"round {r + 1}/{args.repeats}", flush=True)
            meter, made = bench.make()
            add("make batches", meter)
            meter, fast = bench.make(fast_crop=True)
            add("make batches, fast fg crop (what-if)", meter)
            same = all(np.array_equal(a[0], b[0]) and all(
                np.array_equal(a[1][k], b[1][k]) for k in a[1]) for a, b in zip(made, fast))
            if not same:
                raise SystemExit("error: the fast foreground crop made different batches")
            del fast
            add("train_on_batch steps", bench.train_steps(made))
            for name in (names if r % 2 == 0 else names[::-1]):
                add(name, bench.fit_epoch(**variants[name]))
            if with_monitor:
                for name, value in bench.monitor_parts().items():
                    add(f"monitor: {name}", value)
        cfg = bench.cfg
        n_val = len(bench.val_samples)
    return {"runs": runs, "warmup_s": warm_s, "n_val_images": n_val,
            "config": {"name": cfg.name, "steps_per_epoch": cfg.train.steps_per_epoch,
                       "score_every": cfg.train.score_every,
                       "max_val_images": cfg.train.max_val_images,
                       "batch_size": cfg.train.batch_size, "workers": cfg.train.workers,
                       "crop_size": cfg.augment.crop_size, "widths": list(cfg.model.widths)}}


def median_of(values: list[dict[str, float]]) -> dict[str, float]:
    keys = values[0].keys()
    return {k: statistics.median(v[k] for v in values) for k in keys}


def summarise(raw: dict[str, Any], steps: int) -> tuple[list[list[Any]], dict[str, Any]]:
    """Per phase: median wall/user/sys, ratios to the steps; fit rows get the CPU split."""
    med = {name: median_of(v) for name, v in raw["runs"].items()}
    steps_s = med["train_on_batch steps"]["wall_s"]
    make_s = med["make batches"]["wall_s"]
    steps_cpu = med["train_on_batch steps"]["user_s"] + med["train_on_batch steps"]["sys_s"]
    make_cpu = med["make batches"]["user_s"] + med["make batches"]["sys_s"]
    rows = []
    for name, m in med.items():
        cpu = m["user_s"] + m["sys_s"]
        row = [name, m["wall_s"], m["user_s"], m["sys_s"],
               100.0 * m["sys_s"] / cpu if cpu > 0 else float("nan"),
               m["wall_s"] / steps_s if not name.startswith("monitor") else None,
               m["wall_s"] / (steps_s + make_s) if name.startswith("fit") else None,
               cpu / steps_cpu if not name.startswith("monitor") else None,
               cpu / (steps_cpu + make_cpu) if name.startswith("fit") else None,
               m.get("pipeline_cpu_s"), m.get("main_thread_cpu_s"),
               (cpu - m["pipeline_cpu_s"] - m["main_thread_cpu_s"])
               if "pipeline_cpu_s" in m else None,
               m["load"]]
        rows.append(row)
    return rows, med


PHASE_HEADERS = ["phase", "wall s", "user s", "sys s", "sys %", "wall / steps",
                 "wall / (steps + make)", "CPU / steps", "CPU / (steps + make)",
                 "pipeline CPU s", "main-thread CPU s",
                 "other CPU s", "load"]


def epoch_estimates(med: dict[str, Any], steps: int, n_val: int) -> list[list[Any]]:
    """A ``train.py`` epoch of each config (demo, real_cpu) from the measured parts: with the
    FoldMonitor as it was (curves PNG every epoch), as it is now (curves on scored epochs),
    and now plus the faster foreground crop (what-if); in wall seconds and, steadier on a
    shared machine, in CPU seconds (user + sys) relative to the steps' CPU."""
    from cellseg.config import load_config

    def parts(value) -> dict[str, float]:
        return {
            "step": value(med["train_on_batch steps"]) / steps,
            "make": value(med["make batches"]) / steps,
            "fit": value(med["fit (as train.py)"]) / steps,
            "fast": value(med["fit, fast fg crop (what-if)"]) / steps,
            "save": value(med["monitor: save_checkpoint"]),
            "files": value(med["monitor: history_state"]),
            "curves": value(med["monitor: curves_png"]),
            "val_image": value(med["monitor: validation"]) / n_val,
        }

    def epoch(p: dict[str, float], n: int, every: int, nv: int) -> tuple[float, ...]:
        scored_extra = nv * p["val_image"] + p["save"]  # validation + best.keras (if better)
        before = n * p["fit"] + p["save"] + p["files"] + p["curves"] + scored_extra / every
        after = n * p["fit"] + p["save"] + p["files"] + (p["curves"] + scored_extra) / every
        return n * p["step"], n * p["make"], n * p["fit"], scored_extra / every, before, \
            after, after - n * (p["fit"] - p["fast"])

    wall = parts(lambda m: m["wall_s"])
    cpu = parts(lambda m: m["user_s"] + m["sys_s"])
    rows = []
    for path, val_images in ((common.REPO / "configs" / "demo.yaml", None),
                             (REAL_CPU, REAL_CPU_VAL_IMAGES)):
        cfg = load_config(path)
        n = cfg.train.steps_per_epoch
        every = max(cfg.train.score_every, 1)
        nv = val_images if not cfg.train.max_val_images else cfg.train.max_val_images
        w = epoch(wall, n, every, nv)
        c = epoch(cpu, n, every, nv)
        rows.append([cfg.name, n, every, nv, *w, w[4] / w[0], w[5] / w[0], w[6] / w[0],
                     c[4] / c[0], c[5] / c[0], c[6] / c[0]])
    return rows


EST_HEADERS = ["config", "steps", "score every", "val images", "steps s", "make s",
               "fit s", "validation s / epoch", "train.py epoch s before", "after",
               "after + fast fg crop", "wall / steps before", "after", "+ fast fg crop",
               "CPU / steps CPU before", "after", "+ fast fg crop"]


# ------------------------------------------------------------------------------ TF threads
def child(args: argparse.Namespace) -> int:
    """One TensorFlow thread setting: steps and the train.py fit, ``args.repeats`` rounds."""
    import tensorflow as tf

    intra, inter = args.child
    if intra:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
    if inter:
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    raw = measure(args, {"fit (as train.py)": {}}, with_monitor=False)
    print("CHILD_RESULT " + json.dumps(raw["runs"]), flush=True)
    return 0


def tf_threads(args: argparse.Namespace, started: dict[str, Any]) -> int:
    """Each TF setting in its own process; settings alternate, ``args.rounds`` times."""
    runs: dict[str, dict[str, list]] = {}
    for r in range(args.rounds):
        for intra, inter in TF_SETTINGS:
            label = "default" if not (intra or inter) else f"intra {intra}, inter {inter}"
            print(f"round {r + 1}/{args.rounds}: TF threads {label}", flush=True)
            cmd = [sys.executable, __file__, "--child", str(intra), str(inter),
                   "--steps", str(args.steps), "--repeats", "1", "--images", str(args.images),
                   "--config", args.config]
            if args.data_dir:
                cmd += ["--data-dir", args.data_dir]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = [x for x in proc.stdout.splitlines() if x.startswith("CHILD_RESULT ")]
            if proc.returncode or not line:
                print(proc.stdout[-2000:], proc.stderr[-3000:], file=sys.stderr)
                return 1
            for name, values in json.loads(line[0].split(" ", 1)[1]).items():
                runs.setdefault(label, {}).setdefault(name, []).extend(values)
    rows = []
    for label, phases in runs.items():
        s = median_of(phases["train_on_batch steps"])
        f = median_of(phases["fit (as train.py)"])
        m = median_of(phases["make batches"])
        rows.append([label, s["wall_s"], s["user_s"] + s["sys_s"], f["wall_s"], f["user_s"],
                     f["sys_s"], f["wall_s"] / (s["wall_s"] + m["wall_s"]), f["load"]])
    base_steps, base_fit = rows[0][1], rows[0][3]
    for row in rows:
        row += [row[1] / base_steps, row[3] / base_fit]
    headers = ["TF threads", "steps wall s", "steps CPU s", "fit wall s", "fit user s",
               "fit sys s", "fit / (steps + make)", "load", "steps vs default",
               "fit vs default"]
    print(common.text_table(headers, rows))
    notes = [f"{args.steps} steps per measurement, batch and model of "
             f"{Path(args.config).name}; each "
             f"setting in its own process (TensorFlow's thread pools are fixed at start-up), "
             f"settings alternating, {args.rounds} rounds; medians.",
             "0 = TensorFlow's default (the number of cores, 2 here)."]
    report = common.make_report("epoch_tf_threads", vars(args), {"runs": runs, "table": rows},
                                notes=notes, extra_packages=("opencv-python-headless",
                                                             "albumentations"),
                                started=started)
    body = common.markdown_table(headers, rows)
    common.write_results("epoch_tf_threads", report, body, out_dir=args.out_dir,
                         title="Benchmark: TF thread pools and a training epoch")
    return 0


# ------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/demo.yaml",
                        help="YAML config (relative to the repository or the current folder)")
    parser.add_argument("--data-dir", help="competition-format data root (default: synthetic "
                        "images in a temporary folder)")
    parser.add_argument("--images", type=int, default=16, help="images to load (the first "
                        "max_val_images or 8 validate, the rest train)")
    parser.add_argument("--steps", type=int, default=20, help="steps per measured epoch")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds")
    parser.add_argument("--tf-threads", action="store_true", help="compare TensorFlow "
                        "intra/inter-op thread settings (one child process each)")
    parser.add_argument("--rounds", type=int, default=2, help="--tf-threads rounds")
    parser.add_argument("--out-dir", default=str(common.RESULTS_DIR),
                        help="where the results files go (default: %(default)s)")
    parser.add_argument("--child", nargs=2, type=int, metavar=("INTRA", "INTER"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not Path(args.config).is_file() and (common.REPO / args.config).is_file():
        args.config = str(common.REPO / args.config)
    if args.child:
        return child(args)
    started = common.start_info()
    if args.tf_threads:
        return tf_threads(args, started)

    from cellseg.config import load_config

    cfg, real = load_config(args.config), load_config(REAL_CPU)
    same = (cfg.model == real.model and cfg.augment == real.augment
            and cfg.train.batch_size == real.train.batch_size)
    raw = measure(args, FIT_VARIANTS)
    rows, med = summarise(raw, args.steps)
    print(common.text_table(PHASE_HEADERS, rows))
    est = epoch_estimates(med, args.steps, raw["n_val_images"]) if same else []
    if est:
        print(common.text_table(EST_HEADERS, est))
    notes = [
        f"{args.steps} steps per measured epoch, {args.repeats} interleaved rounds, medians; "
        f"model, batch ({cfg.train.batch_size} x {cfg.augment.crop_size}²) and optimizer of "
        f"{Path(args.config).name} (widths {list(cfg.model.widths)}); "
        f"data: {args.data_dir or f'{args.images} synthetic 520 x 704 images'}.",
        "steps = model.train_on_batch on pre-made batches; make = TrainBatches.__getitem__ "
        "serially; fit = one model.fit epoch on TrainBatches as train_fold sets it up "
        f"(workers {cfg.train.workers}, progress bar), timed on_epoch_begin..on_epoch_end.",
        "pipeline CPU = CPU time of the batch-making calls (in the worker threads); "
        "main-thread CPU = the Python thread that runs fit; other = everything else in the "
        "process (TensorFlow's intra/inter-op and tf.data threads, OpenCV's threads).",
        "monitor rows: the parts of FoldMonitor.on_epoch_end, then the real method on an "
        f"unscored and a scored epoch (validation of {raw['n_val_images']} images, best.keras "
        "written as if the score improved).",
        "Estimates: train.py epoch = steps_per_epoch x (fit per step) + last.keras + "
        "history/state + curves PNG + (validation + best.keras) / score_every; 'before' draws "
        "the curves every epoch, 'after' only on scored epochs. real_cpu has the same model, "
        f"crops and batch; its validation set is taken as {REAL_CPU_VAL_IMAGES} images (one "
        "fold of the 40-image real subset; max_val_images 0 = the whole fold).",
        "The machine is shared with other jobs: read the load column; compare rows of this "
        "run only, not with other runs.",
    ]
    results = {"phases": {r[0]: dict(zip(PHASE_HEADERS[1:], r[1:])) for r in rows},
               "raw": raw, "estimates": [dict(zip(EST_HEADERS, r)) for r in est]}
    report = common.make_report("epoch", {k: v for k, v in vars(args).items()
                                          if k not in ("child",)}, results, notes=notes,
                                extra_packages=("opencv-python-headless", "albumentations"),
                                started=started)
    body = "## Phases (medians)\n\n" + common.markdown_table(PHASE_HEADERS, rows)
    if est:
        body += ("\n\n## A train.py epoch per config (from the parts above)\n\n"
                 + common.markdown_table(EST_HEADERS, est))
    common.write_results("epoch", report, body, out_dir=args.out_dir,
                         title="Benchmark: where a training epoch's time goes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
