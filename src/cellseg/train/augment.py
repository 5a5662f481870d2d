"""Training augmentation with albumentations 2.

Targets are passed as ``mask`` so every geometric transform moves them with the image using
nearest-neighbour interpolation; photometric transforms touch the image only.
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np

from cellseg.config import AugmentConfig

#: Elastic deformation (``augment.elastic`` > 0): a Gaussian displacement field smoothed over
#: about one small cell (sigma 10 px) and scaled to a mean shift of ~1.6 px (measured on a ramp
#: image), so outlines bend the way real cells differ from one another while the cells stay
#: recognisable; the training-set trick of the original U-Net for few annotated images.
ELASTIC_ALPHA = 300.0
ELASTIC_SIGMA = 10.0


def build_augment(cfg: AugmentConfig, seed: int | None = None, train: bool = True
                  ) -> A.Compose:
    """The training pipeline: random crop (padded if the image is smaller), geometry, photometry.

    Args:
        cfg: augmentation settings (crop size, which transforms).
        seed: seeds albumentations' own generator (reproducible streams per worker).
        train: False gives just the crop (for deterministic checks).
    """
    size = cfg.crop_size
    ops: list = [A.PadIfNeeded(min_height=size, min_width=size,
                               border_mode=cv2.BORDER_REFLECT_101)]
    fg = cfg.foreground_crop_p if train else 0.0
    if fg > 0:
        # Sparse images (cort: ~30 small cells) give mostly empty random crops; centring some
        # crops on annotated pixels spends the few CPU/GPU steps on cells.
        ops.append(A.OneOf([A.CropNonEmptyMaskIfExists(size, size, p=fg),
                            A.RandomCrop(size, size, p=max(1.0 - fg, 1e-6))], p=1.0))
    else:
        ops.append(A.RandomCrop(size, size))
    if train:
        if cfg.flips:
            ops += [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]
        if cfg.rotate90:
            ops.append(A.RandomRotate90(p=0.5))  # crops are square, so shapes are kept
        if cfg.shift_scale_rotate:
            ops.append(A.Affine(scale=(1 - cfg.scale_limit, 1 + cfg.scale_limit),
                                translate_percent=(-0.05, 0.05), rotate=(-30, 30),
                                interpolation=cv2.INTER_LINEAR,
                                mask_interpolation=cv2.INTER_NEAREST,
                                border_mode=cv2.BORDER_REFLECT_101, p=0.5))
        if cfg.elastic > 0:
            ops.append(A.ElasticTransform(alpha=ELASTIC_ALPHA, sigma=ELASTIC_SIGMA,
                                          interpolation=cv2.INTER_LINEAR,
                                          mask_interpolation=cv2.INTER_NEAREST,
                                          border_mode=cv2.BORDER_REFLECT_101, p=cfg.elastic))
        if cfg.brightness_contrast > 0:
            ops.append(A.RandomBrightnessContrast(brightness_limit=cfg.brightness_contrast,
                                                  contrast_limit=cfg.brightness_contrast, p=0.5))
        if cfg.gamma:
            ops.append(A.RandomGamma(gamma_limit=(80, 120), p=0.3))
        if cfg.blur:
            ops.append(A.GaussianBlur(sigma_limit=(0.3, 1.2), p=0.2))
        if cfg.noise:
            ops.append(A.GaussNoise(std_range=(0.01, 0.05), p=0.3))
    return A.Compose(ops, seed=seed, mask_interpolation=cv2.INTER_NEAREST)


def apply(aug: A.Compose, image: np.ndarray, targets: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray]:
    """Augment an image (uint8 H x W) and its targets (uint8 H x W x C) together."""
    out = aug(image=image, mask=targets)
    return out["image"], out["mask"]
