"""Benchmark: size and speed of every ablation variant of the network on this machine's CPU.

Why: the paper's comparison (U-Net, UNet++ with deep supervision, Attention U-Net, Attention
UNet++) is a trade of accuracy against cost; this measures the cost side with one builder
(``cellseg.model.network.build_model``) so that only the switch under study changes:

* parameters;
* forward pass of one 528 x 704 image (the competition's 520 x 704 padded to a multiple of
  16), through the same compiled call inference uses (``cellseg.model.predict._forward``): median
  of ``--repeats`` calls after warm-up;
* one training step (``train_on_batch``, AdamW, the project's losses and metrics) on 2 crops
  of 256 x 256;
* all models are timed round-robin (one call of each per round, ``--repeats`` rounds, the
  median per model), so a job that starts on a shared machine slows every row alike;
* UNet++ pruning: the sub-network up to ``X^{0,L}`` for L = 1..D-1 (``prune=L`` at
  inference), for the deep-supervised UNet++ variants;
* achieved FLOP/s of the forward pass: FLOPs counted from the traced TensorFlow graph (every
  ``Conv2D``, transposed conv and ``MatMul``: 2 x multiply-adds; element-wise ops ignored)
  divided by the measured time, against the machine's ceiling, measured as the rate of a
  2048 x 2048 float32 ``tf.linalg.matmul`` in the same run;
* ``keras_unet_collection.models.unet_plus_2d`` (the common Keras UNet++) at equal widths
  with the same pooling / transposed-conv / batch-norm choices, as an outside reference for
  the DS UNet++ row, if that package installs and builds under Keras 3.

Usage:
    python bench/bench_model.py [--widths 16,32,64,128,256] [--repeats 5] [--train-repeats 5]
                                [--height 528 --width 704] [--variants unet,unetpp_ds,...]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import common  # noqa: E402
import numpy as np  # noqa: E402

NAME = "model"

# name -> (label, nested, attention, deep_supervision): the paper's ablation rows.
VARIANTS: dict[str, tuple[str, bool, bool, bool]] = {
    "unet": ("U-Net", False, False, False),
    "unetpp_ds": ("UNet++ (DS)", True, False, True),
    "att_unet": ("Attention U-Net", False, True, False),
    "att_unetpp_ds": ("Attention UNet++ (DS)", True, True, True),
}


def graph_flops(fn: Any, shape: tuple[int, ...]) -> int:
    """FLOPs (2 x multiply-adds) of ``fn`` on a float32 input of ``shape``, from its graph.

    Why from the graph rather than layer by layer: it counts exactly what TensorFlow runs,
    including our attention gates' matmuls and any outside model's own layers, with static
    shapes for a fixed input size.
    """
    import tensorflow as tf

    concrete = tf.function(fn).get_concrete_function(tf.TensorSpec(shape, tf.float32))
    total = 0
    for op in concrete.graph.get_operations():
        if op.type == "Conv2D":
            kh, kw, cin, _ = op.inputs[1].shape
            total += 2 * kh * kw * cin * int(np.prod(op.outputs[0].shape))
        elif op.type == "Conv2DBackpropInput":  # transposed conv
            kh, kw, cout, cin = op.inputs[1].shape
            total += 2 * kh * kw * cout * int(np.prod(op.inputs[2].shape))
        elif op.type in ("MatMul", "BatchMatMulV2", "BatchMatMul"):
            a = op.inputs[0].shape
            transpose = op.get_attr("transpose_a") if op.type == "MatMul" else op.get_attr(
                "adj_x")
            k = a[-2] if transpose else a[-1]
            total += 2 * k * int(np.prod(op.outputs[0].shape))
    return int(total)


def matmul_ceiling(n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """FLOP/s of a float32 n x n matmul: the practical peak of this CPU for TensorFlow."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    a = tf.constant(rng.standard_normal((n, n), dtype=np.float32))
    b = tf.constant(rng.standard_normal((n, n), dtype=np.float32))
    t, _ = common.time_call(lambda: tf.linalg.matmul(a, b).numpy(), repeats, warmup=2)
    return {"n": n, "median_s": t.median, "gflops_per_s": 2 * n**3 / t.median / 1e9}


def _forward_fn(model: Any) -> Any:
    """The compiled forward call inference uses, returning NumPy (so the time includes the
    copy out, as in inference)."""
    import keras

    from cellseg.model.predict import _forward

    fn = _forward(model)

    def call(x: Any) -> Any:
        return keras.tree.map_structure(keras.ops.convert_to_numpy, fn(x))

    return call


def time_forward(model: Any, x: np.ndarray, repeats: int) -> common.Timing:
    """Median forward time of one batch (two warm-up calls: tracing, then allocation)."""
    import tensorflow as tf

    call = _forward_fn(model)
    xt = tf.constant(x)
    t, _ = common.time_call(lambda: call(xt), repeats, warmup=2)
    return t


def _train_step_fn(model: Any, crop: int, batch: int) -> Any:
    """A ``train_on_batch`` call with the project's optimiser, losses and metrics."""
    import keras

    from cellseg.config import TrainConfig
    from cellseg.constants import CELL_TYPES
    from cellseg.model.losses import compile_kwargs
    from cellseg.model.network import CELL_TYPE_OUTPUT, model_info, output_names

    cfg = TrainConfig()
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate=1e-3,
                                                   weight_decay=cfg.weight_decay),
                  **compile_kwargs(model, cfg))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, crop, crop, 1)).astype(np.float32)
    n_targets = model_info(model).n_targets
    y: dict[str, np.ndarray] = {}
    for name in output_names(model):
        if name == CELL_TYPE_OUTPUT:
            y[name] = rng.integers(0, len(CELL_TYPES), size=(batch,)).astype(np.int32)
        else:
            y[name] = (rng.random((batch, crop, crop, n_targets)) > 0.7).astype(np.float32)
    return lambda: model.train_on_batch(x, y)


def interleaved(calls: dict[str, Any], repeats: int, warmup: int = 2
                ) -> dict[str, common.Timing]:
    """Time several calls round-robin: warm-up each, then ``repeats`` rounds of one call each.

    Why round-robin: on a shared machine, another job that starts or stops mid-run would
    otherwise slow down whichever model happened to be measured then, and the ratios between
    models (the point of the table) would be wrong; interleaving spreads it over all of them.
    """
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    timings = {k: common.Timing() for k in calls}
    for _ in range(repeats):
        for key, fn in calls.items():
            t, _ = common.time_call(fn, 1, warmup=0)
            timings[key].times.extend(t.times)
    return timings


def _kuc_model(widths: list[int]) -> Any:
    """``keras_unet_collection``'s UNet++ with our choices (max-pool, transposed conv, BN,
    deep supervision)."""
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its output names
        from keras_unet_collection import models as kuc

        return kuc.unet_plus_2d((None, None, 1), list(widths), n_labels=2,
                                stack_num_down=2, stack_num_up=2, activation="ReLU",
                                output_activation="Sigmoid", batch_norm=True, pool=True,
                                unpool=False, deep_supervision=True, name="kuc_unetpp")


def run(widths: list[int], height: int = 528, width: int = 704, repeats: int = 5,
        train_repeats: int = 5, crop: int = 256, variants: list[str] | None = None,
        kuc: bool = True, matmul_n: int = 2048) -> dict[str, Any]:
    """All measurements; returns the results dict."""
    import keras
    import tensorflow as tf

    from cellseg.config import ModelConfig
    from cellseg.model.predict import pruned
    from cellseg.model.network import build_model

    tf.get_logger().setLevel("ERROR")  # "N calls triggered retracing": one trace per model
    x = tf.constant(np.random.default_rng(0).standard_normal((1, height, width, 1)).astype(
        np.float32))
    shape = (1, height, width, 1)
    ceiling_start = matmul_ceiling(matmul_n)
    models: dict[str, Any] = {}
    rows: dict[str, dict[str, Any]] = {}
    for key in variants or list(VARIANTS):
        label, nested, attention, ds = VARIANTS[key]
        keras.utils.set_random_seed(0)
        model = build_model(ModelConfig(widths=list(widths), nested=nested,
                                        attention=attention, deep_supervision=ds,
                                        cell_type_head=True), name=key)
        models[key] = model
        rows[key] = {"variant": key, "label": label, "nested": nested,
                     "attention": attention, "deep_supervision": ds,
                     "params": int(model.count_params())}
        if nested and ds:
            for level in range(1, len(widths) - 1):
                models[f"{key}@prune={level}"] = pruned(model, level)
    ref: dict[str, Any] | None = None
    if kuc:
        try:
            keras.utils.set_random_seed(0)
            models["kuc"] = _kuc_model(widths)
            ref = {"ok": True, "params": int(models["kuc"].count_params())}
        except Exception as exc:  # any failure: record it exactly, skip the row
            ref = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                   "traceback": traceback.format_exc(limit=3)}

    forward = interleaved({k: (lambda c=_forward_fn(m): c(x)) for k, m in models.items()},
                          repeats)
    ceiling_end = matmul_ceiling(matmul_n)
    ceiling = max(ceiling_start["gflops_per_s"], ceiling_end["gflops_per_s"])
    flops = {k: graph_flops(lambda t, m=m: m(t, training=False), shape)
             for k, m in models.items()}

    def perf(key: str) -> dict[str, float]:
        t = forward[key]
        return {"forward_ms": t.median_ms, "forward_min_ms": 1000 * t.min,
                "gflops": flops[key] / 1e9, "gflops_per_s": flops[key] / t.median / 1e9,
                "pct_of_matmul_ceiling": 100.0 * flops[key] / t.median / 1e9 / ceiling}

    for key, row in rows.items():
        row.update(perf(key))
        prunes = sorted(k for k in models if k.startswith(f"{key}@prune="))
        if prunes:
            row["pruned"] = []
            for k in prunes:
                level = int(k.rsplit("=", 1)[1])
                row["pruned"].append({"level": level, "heads": f"prune={level}",
                                      "params": int(models[k].count_params()), **perf(k),
                                      "speedup_vs_full": forward[key].median
                                      / forward[k].median})
    if ref is not None and ref.get("ok"):
        ref.update(perf("kuc"))
        if "unetpp_ds" in rows:
            ours = rows["unetpp_ds"]
            ref["ratio_ours_unetpp_ds_over_kuc_forward_ms"] = ours["forward_ms"] / ref[
                "forward_ms"]
            ref["ratio_ours_unetpp_ds_over_kuc_params"] = ours["params"] / ref["params"]
            ref["ratio_ours_unetpp_ds_over_kuc_gflops"] = ours["gflops"] / ref["gflops"]

    train = interleaved({k: _train_step_fn(models[k], crop, 2) for k in rows}, train_repeats)
    for key, row in rows.items():
        row["train_step_ms"] = train[key].median_ms
        row["train_step_min_ms"] = 1000 * train[key].min
    out: dict[str, Any] = {
        "widths": widths, "input": list(shape), "train_batch": [2, crop, crop, 1],
        "matmul_ceiling": {"n": matmul_n, "gflops_per_s": ceiling,
                           "gflops_per_s_start": ceiling_start["gflops_per_s"],
                           "gflops_per_s_end": ceiling_end["gflops_per_s"]},
        "variants": list(rows.values()),
        "timing": "round-robin over all models (see interleaved())",
        "tf_threads": {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                       "inter_op": tf.config.threading.get_inter_op_parallelism_threads()},
    }
    if ref is not None:
        out["keras_unet_collection"] = ref
    return out


def tables(r: dict[str, Any]) -> list[tuple[str, list[str], list[list[Any]]]]:
    """(title, headers, rows) for each table of the results."""
    main_rows = [[v["label"], v["params"], v["forward_ms"], v["gflops"], v["gflops_per_s"],
                  v["pct_of_matmul_ceiling"], v["train_step_ms"]] for v in r["variants"]]
    ref = r.get("keras_unet_collection")
    if ref and ref.get("ok"):
        main_rows.append(["keras_unet_collection unet_plus_2d (DS)", ref["params"],
                          ref["forward_ms"], ref["gflops"], ref["gflops_per_s"],
                          ref["pct_of_matmul_ceiling"], None])
    out = [("Variants", ["variant", "params", "forward ms", "GFLOP", "GFLOP/s",
                         "% of matmul ceiling", "train step ms"], main_rows)]
    pr = []
    for v in r["variants"]:
        for p in v.get("pruned", []):
            pr.append([v["label"], p["heads"], p["params"], p["forward_ms"], p["gflops"],
                       p["speedup_vs_full"]])
        if "pruned" in v:
            pr.append([v["label"], "full (all heads)", v["params"], v["forward_ms"],
                       v["gflops"], 1.0])
    if pr:
        out.append(("UNet++ pruning at inference", ["variant", "heads", "params",
                                                     "forward ms", "GFLOP", "x faster"], pr))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--widths", default="16,32,64,128,256",
                        help="filters per level, comma-separated (default %(default)s)")
    parser.add_argument("--height", type=int, default=528)
    parser.add_argument("--width", type=int, default=704)
    parser.add_argument("--repeats", type=int, default=5, help="timed forward passes")
    parser.add_argument("--train-repeats", type=int, default=5, help="timed training steps")
    parser.add_argument("--crop", type=int, default=256, help="training crop size")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"subset of {','.join(VARIANTS)}")
    parser.add_argument("--no-kuc", action="store_true",
                        help="skip the keras_unet_collection reference")
    parser.add_argument("--matmul-n", type=int, default=2048)
    parser.add_argument("--out-dir", default=str(common.RESULTS_DIR))
    args = parser.parse_args(argv)
    try:
        widths = [int(v) for v in args.widths.split(",") if v]
    except ValueError:
        parser.error(f"--widths: expected comma-separated integers, got {args.widths!r}")
    variants = [v for v in args.variants.split(",") if v]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        parser.error(f"--variants: unknown {bad}; known: {list(VARIANTS)}")
    depth = len(widths) - 1
    if len(widths) < 2 or args.height % 2**depth or args.width % 2**depth \
            or args.crop % 2**depth:
        parser.error(f"need >= 2 widths and height, width, crop multiples of 2^{depth}")
    if min(args.repeats, args.train_repeats) < 1:
        parser.error("--repeats and --train-repeats must be >= 1")
    start = common.start_info()
    r = run(widths, args.height, args.width, args.repeats, args.train_repeats, args.crop,
            variants, not args.no_kuc, args.matmul_n)
    c = r["matmul_ceiling"]
    print(f"Models with widths {widths}: forward on 1 x {args.height} x {args.width}, "
          f"training step on 2 x {args.crop} x {args.crop}; matmul ceiling "
          f"{c['gflops_per_s']:.1f} GFLOP/s ({c['n']}x{c['n']} float32)")
    body = [f"Widths {widths}; forward pass: batch 1 x {args.height} x {args.width} "
            f"(median of {args.repeats} rounds after 2 warm-up calls, all models "
            f"round-robin); training step: 2 crops of {args.crop} x {args.crop} (median of "
            f"{args.train_repeats}); FLOP/s ceiling = "
            f"{c['n']} x {c['n']} float32 matmul at {c['gflops_per_s']:.1f} GFLOP/s "
            f"(measured in this run)."]
    for title, headers, rows in tables(r):
        print(f"\n{title}")
        print(common.text_table(headers, rows, digits=2))
        body.append(f"## {title}\n\n" + common.markdown_table(headers, rows, digits=2))
    ref = r.get("keras_unet_collection")
    if ref is not None:
        if ref.get("ok"):
            line = (f"keras_unet_collection unet_plus_2d at equal widths: ours (UNet++ DS) "
                    f"forward time / theirs = "
                    f"{ref.get('ratio_ours_unetpp_ds_over_kuc_forward_ms', float('nan')):.2f}, "
                    f"params ours / theirs = "
                    f"{ref.get('ratio_ours_unetpp_ds_over_kuc_params', float('nan')):.2f}, "
                    f"GFLOP ours / theirs = "
                    f"{ref.get('ratio_ours_unetpp_ds_over_kuc_gflops', float('nan')):.2f}")
        else:
            line = f"keras_unet_collection reference skipped: {ref['error']}"
        print(line)
        body.append(line)
    notes = [
        "GFLOP counted from the traced TensorFlow graph at this input size: Conv2D, "
        "transposed conv (Conv2DBackpropInput) and MatMul ops, 2 FLOPs per multiply-add; "
        "batch norm, activations, pooling, attention's element-wise ops are not counted.",
        "% of matmul ceiling = achieved GFLOP/s / GFLOP/s of a large float32 matmul in the "
        "same run and process (TensorFlow's default thread pools).",
        "Our models include the cell-type head; keras_unet_collection's has 5 sigmoid "
        "heads (4 deep supervision + final) and no cell-type head.",
        "Timings on a shared machine: see the load averages above. All models are timed "
        "round-robin (one call each per round), so the ratios between rows are more stable "
        "than the absolute numbers. The matmul ceiling is the better of two measurements "
        "(before and after the forward passes).",
    ]
    report = common.make_report(
        NAME, {"widths": widths, "height": args.height, "width": args.width,
               "repeats": args.repeats, "train_repeats": args.train_repeats,
               "crop": args.crop, "variants": variants}, r, notes,
        extra_packages=("keras-unet-collection",), started=start)
    jpath, _ = common.write_results(NAME, report, "\n\n".join(body), args.out_dir,
                                    title="Benchmark: model size and speed (CPU)")
    print(f"wrote {jpath} (+ .md)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
