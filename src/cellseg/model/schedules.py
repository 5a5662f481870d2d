"""Learning-rate schedules (registered, so saved optimizers reload with their schedule)."""

from __future__ import annotations

import math
from typing import Any

import keras


@keras.saving.register_keras_serializable(package="cellseg")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to ``peak`` over ``warmup_steps``, then cosine decay to ``peak * floor``.

    A schedule of the optimizer step, so it continues exactly after ``--resume``.

    Not ``keras.optimizers.schedules.CosineDecay(0, T - W, alpha=floor, warmup_target=peak,
    warmup_steps=W)``: its decay is the same, but its warm-up is one step later (step ``k``
    gets ``peak * k / W``, so the first batch trains at lr 0); every checkpoint so far also
    names ``cellseg>WarmupCosine``.
    """

    def __init__(self, peak: float, warmup_steps: int, total_steps: int, floor: float = 0.01):
        self.peak = float(peak)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(max(total_steps, warmup_steps + 1))
        self.floor = float(floor)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        warm = self.peak * (step + 1.0) / float(max(self.warmup_steps, 1))
        progress = (step - self.warmup_steps) / float(self.total_steps - self.warmup_steps)
        progress = keras.ops.clip(progress, 0.0, 1.0)
        cosine = self.peak * (self.floor + (1 - self.floor) * 0.5
                              * (1.0 + keras.ops.cos(math.pi * progress)))
        return keras.ops.where(step < self.warmup_steps, warm, cosine)

    def get_config(self) -> dict[str, Any]:
        return {"peak": self.peak, "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps, "floor": self.floor}
