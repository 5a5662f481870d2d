"""Where a fold trains: one device, several GPUs (Mirrored) or several hosts (MultiWorker).

Also the two Keras 3 work-arounds multi-worker training needs, and the local copy that
validation runs on so that it never goes through the strategy.
"""

from __future__ import annotations

import contextlib
import json
import os

import keras

from cellseg.config import Config
from cellseg.train.batches import TrainBatches


def make_strategy(cfg: Config):
    """``tf.distribute`` strategy from the config and the environment.

    ``train.distribute``: ``auto`` = MultiWorkerMirrored when ``TF_CONFIG`` is set, Mirrored on
    several GPUs, otherwise the default strategy; or force ``none``/``mirrored``/``multiworker``.
    ``train.cpu_replicas`` > 1 splits the CPU into that many logical devices and mirrors over
    them (how tests exercise the multi-device path without a GPU).
    """
    import tensorflow as tf

    mode = cfg.train.distribute
    if cfg.train.cpu_replicas > 1:
        cpus = tf.config.list_physical_devices("CPU")
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * cfg.train.cpu_replicas)
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        if mode in ("auto", "mirrored"):
            return tf.distribute.MirroredStrategy(devices)
    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(gpu, True)
    if mode == "multiworker" or (mode == "auto" and os.environ.get("TF_CONFIG")):
        return tf.distribute.MultiWorkerMirroredStrategy()
    if mode == "mirrored" or (mode == "auto" and len(tf.config.list_physical_devices("GPU")) > 1):
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief() -> bool:
    """True unless ``TF_CONFIG`` names this process a non-chief worker."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return True
    task = json.loads(raw).get("task", {})
    kind, index = task.get("type", "worker"), int(task.get("index", 0))
    cluster = json.loads(raw).get("cluster", {})
    if "chief" in cluster:
        return kind == "chief"
    return kind == "worker" and index == 0


def work_around_multiworker_build(model: keras.Model, strategy, batches: TrainBatches):
    """Two Keras 3 bugs under MultiWorkerMirroredStrategy (keras-team/keras#20585,
    tensorflow/tensorflow#72388, both open):

    - ``fit`` first reduces a distributed data batch to build its metrics, which fails
      ("Attempt to convert a value (PerReplica...)"): build model state from one local batch
      ourselves, then let ``fit`` take the strategy from the enclosing ``strategy.scope()``;
    - the "mean" reduction of the step's scalar logs across workers uses ``axis=0`` and fails
      ("Invalid reduction dimension 0"): the train step returns each log as a length-1
      vector, so the cross-worker mean is taken over that axis and yields the scalar again.
    """
    if not is_multiworker(strategy):
        return contextlib.nullcontext()
    with strategy.scope():
        model._symbolic_build(data_batch=batches[0])
    model._distribute_strategy = None
    step = model.train_step

    def train_step(data):
        return {k: keras.ops.reshape(v, (1,)) for k, v in step(data).items()}

    model.train_step = train_step
    return strategy.scope()


def is_multiworker(strategy) -> bool:
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def local_copy(model: keras.Model, strategy) -> keras.Model:
    """The model itself, or under a multi-replica strategy a plain copy for validation.

    ``predict`` under a strategy splits or (multi-worker) gathers batches across replicas;
    validation wants one local forward pass per image, so it runs on a copy outside the
    strategy that receives the trained weights before each validation.
    """
    if strategy.num_replicas_in_sync == 1:
        return model
    return keras.models.clone_model(model)
