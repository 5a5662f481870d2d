"""Input pipeline: images + cached targets -> augmented, normalised training batches.

``keras.utils.PyDataset`` with worker threads (OpenCV and albumentations release the GIL)
feeds ``model.fit``; Keras turns it into a ``tf.data`` pipeline, so the same object works under
``tf.distribute`` strategies. Each batch is seeded from (seed, epoch, batch index), so a run is
reproducible whatever the number of workers.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from tqdm.auto import tqdm

from cellseg.config import Config
from cellseg.constants import CELL_TYPE_INDEX
from cellseg.data.data_root import Instances, TrainData
from cellseg.model.predict import normalize_image
from cellseg.model.targets import (
    DEFAULT_MAX_RADIUS,
    TargetCache,
    make_targets,
    targets_as_float,
)
from cellseg.train import augment


@dataclass
class Sample:
    """One training/validation image in memory."""

    image_id: str
    cell_type: str
    image: np.ndarray  # uint8 H x W
    targets: np.ndarray  # uint8 H x W x C
    instances: Instances | None = None  # kept for validation scoring only
    weight: float = 1.0  # relative chance of being drawn (extra data roots: data.extra)


def load_samples(data: TrainData, ids: list[str], cache_dir: str | Path | None = None,
                 keep_instances: bool = False, desc: str = "loading",
                 max_radius: int = DEFAULT_MAX_RADIUS, n_targets: int = 2) -> list[Sample]:
    """Load images and (cached) targets of ``ids``, with a progress bar.

    ``max_radius``: cap of the touching band's half-width (``train.border_radius_max``);
    ``n_targets``: target channels (``model.n_targets``)."""
    cache = TargetCache(cache_dir, max_radius, n_targets) if cache_dir else None
    annotations = data.table["annotation"].to_numpy()
    samples = []
    for image_id in tqdm(ids, desc=desc, unit="img", leave=False):
        image = data.load_image(image_id)
        inst = data.load_instances(image_id) if (keep_instances or cache is None) else None
        if cache is not None:
            rows = data.rows(image_id)
            targets = cache.get(image_id, annotations[rows],
                                lambda i=image_id, inst=inst: inst or data.load_instances(i))
        else:
            targets = make_targets(inst, max_radius=max_radius, n_targets=n_targets)
        samples.append(Sample(image_id, data.cell_type(image_id), image, targets,
                              inst if keep_instances else None))
    return samples


def make_batch_targets(targets: np.ndarray, cell_types: np.ndarray,
                       output_names: list[str]) -> dict[str, np.ndarray]:
    """The Keras ``y`` dict: every seg head gets the same maps; ``cell_type`` an index."""
    y: dict[str, np.ndarray] = {}
    for name in output_names:
        if name == "cell_type":
            y[name] = cell_types.astype(np.int32)
        else:
            y[name] = targets
    return y


class TrainBatches(keras.utils.PyDataset):
    """Random augmented crops, ``steps`` batches per epoch."""

    def __init__(self, samples: list[Sample], cfg: Config, output_names: list[str],
                 batch_size: int | None = None, steps: int | None = None,
                 workers: int | None = None, seed: int | None = None) -> None:
        workers = cfg.train.workers if workers is None else workers
        super().__init__(workers=max(1, workers), use_multiprocessing=False,
                         max_queue_size=max(4, 2 * max(1, workers)))
        if not samples:
            raise ValueError("TrainBatches: no training images")
        self.samples = samples
        self.cfg = cfg
        self.output_names = list(output_names)
        self.batch_size = batch_size or cfg.train.batch_size
        self.steps = steps or cfg.train.steps_per_epoch
        self.seed = cfg.seed if seed is None else seed
        self.epoch = 0
        self._local = threading.local()
        by_type: dict[str, list[int]] = {}
        for i, sample in enumerate(samples):
            by_type.setdefault(sample.cell_type, []).append(i)
        self._by_type = [np.array(v) for _, v in sorted(by_type.items())]
        weights = np.array([s.weight for s in samples], np.float64)
        self._weighted = bool(np.any(weights != 1.0))
        # Cumulative weights per group (and overall) for weighted draws.
        self._cum_by_type = [np.cumsum(weights[g]) for g in self._by_type]
        self._cum_all = np.cumsum(weights)

    @staticmethod
    def _draw(rng: np.random.Generator, cum: np.ndarray) -> int:
        return int(min(np.searchsorted(cum, rng.random() * cum[-1], side="right"), cum.size - 1))

    def _pick(self, rng: np.random.Generator) -> Sample:
        """A random image; with ``balance_cell_types`` each type is equally likely first;
        within the choice an image's chance is proportional to its ``weight``."""
        if self.cfg.train.balance_cell_types:
            g = int(rng.integers(len(self._by_type)))
            group = self._by_type[g]
            if self._weighted:
                return self.samples[int(group[self._draw(rng, self._cum_by_type[g])])]
            return self.samples[int(group[rng.integers(group.size)])]
        if self._weighted:
            return self.samples[self._draw(rng, self._cum_all)]
        return self.samples[int(rng.integers(len(self.samples)))]

    def __len__(self) -> int:
        return self.steps

    def on_epoch_end(self) -> None:
        self.epoch += 1

    def _augmenter(self):
        aug = getattr(self._local, "aug", None)
        if aug is None:
            aug = augment.build_augment(self.cfg.augment, seed=0)
            self._local.aug = aug
        return aug

    def __getitem__(self, index: int):
        rng = np.random.default_rng([self.seed, self.epoch, index])
        aug = self._augmenter()
        size = self.cfg.augment.crop_size
        x = np.empty((self.batch_size, size, size, 1), np.float32)
        n_targets = self.samples[0].targets.shape[-1]
        t = np.empty((self.batch_size, size, size, n_targets), np.float32)
        types = np.empty(self.batch_size, np.int64)
        for b in range(self.batch_size):
            s = self._pick(rng)
            aug.set_random_seed(int(rng.integers(2**31 - 1)))
            image, targets = augment.apply(aug, s.image, s.targets)
            x[b, ..., 0] = normalize_image(image)
            t[b] = targets_as_float(targets)
            types[b] = CELL_TYPE_INDEX[s.cell_type]
        return x, make_batch_targets(t, types, self.output_names)
