"""What the DALI pipelines need to know: the ``data:`` section of a training config.

Pydantic only, so that ``vigsp.config.schema`` can assemble it without importing DALI. Unknown keys
are errors, so a typo (``data.augmentation.hflip``) fails at load time instead of being ignored.
Fields marked SHAPES_CHECKPOINT set tensor shapes: a resume refuses them changed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from vigsp.config.section import SHAPES_CHECKPOINT, Section

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "AugmentationConfig",
    "DataConfig",
    "RandAugmentConfig",
    "SuperpixelConfig",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SuperpixelConfig(Section):
    method: Literal["slic", "grid"] = Field(
        "slic",
        description="slic: SLIC superpixels; grid: a regular grid of square cells (ablation)",
        json_schema_extra=SHAPES_CHECKPOINT,
    )
    n_segments: int = Field(
        ge=1,
        description="target number of superpixels per image (SLIC's is approximate)",
        json_schema_extra=SHAPES_CHECKPOINT,
    )
    compactness: float = Field(10.0, gt=0, description="SLIC colour/space trade-off; higher = more square")
    max_iter: int = Field(10, ge=1, description="SLIC k-means iterations")
    subsample_stride: int = Field(
        1,
        ge=1,
        description="SLIC iterations assign every n-th row (rotating), then one full pass: about n times "
        "less work per iteration for nearly the same superpixels (fast-slic uses 3); 1 = classic SLIC",
    )


class RandAugmentConfig(Section):
    """timm's ``rand-m{magnitude}-n{num_ops}-mstd{magnitude_std}-inc1``, built from DALI's RandAugment ops."""

    num_ops: int = Field(2, ge=0, description="operations applied per image; 0 = none")
    magnitude: float = Field(9.0, ge=0, le=10, description="operation strength on timm's 0-10 scale")
    magnitude_std: float = Field(
        0.5, ge=0, description="per-image, per-operation Gaussian noise on the magnitude (clipped to 0-10)"
    )


class AugmentationConfig(Section):
    """Training augmentation. The DALI pipeline applies everything up to random erasing, in this order:
    random resized crop, flip, colour jitter, RandAugment, random erasing; mixup/cutmix/repeated
    augmentation act on batches or the sample order and are noted where they apply."""

    scale: tuple[float, float] = Field((0.08, 1.0), description="random-resized-crop area range, fractions")
    ratio: tuple[float, float] = Field((3 / 4, 4 / 3), description="random-resized-crop aspect-ratio range")
    hflip_prob: float = Field(0.5, ge=0, le=1, description="probability of a horizontal flip")
    color_jitter: float = Field(
        0.0, ge=0, lt=1, description="brightness/contrast/saturation factors drawn from [1-x, 1+x]; 0 = off"
    )
    randaugment: RandAugmentConfig | None = Field(None, description="RandAugment settings; null = off")
    random_erasing: float = Field(
        0.0,
        ge=0,
        le=1,
        description="probability of erasing one rectangle (2-33 % of the image) with the mean colour, "
        "before the superpixels are computed so that the graph sees it too; 0 = off",
    )
    mixup_alpha: float = Field(
        0.0, ge=0, description="mixup Beta(alpha, alpha); 0 = off (the trainer, per batch)"
    )
    cutmix_alpha: float = Field(
        0.0, ge=0, description="cutmix Beta(alpha, alpha); 0 = off (the trainer, per batch)"
    )
    repeated_augment: int = Field(
        1,
        ge=1,
        description="each image appears this many times per epoch, on different ranks, each copy "
        "augmented differently; the epoch keeps its length (timm's RASampler); 1 = off",
    )

    @field_validator("scale")
    @classmethod
    def _ordered_fractions(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0 < low <= high <= 1:
            raise ValueError(f"needs 0 < min <= max <= 1, got [{low}, {high}]")
        return value

    @field_validator("ratio")
    @classmethod
    def _ordered_ratio(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0 < low <= high:
            raise ValueError(f"needs 0 < min <= max, got [{low}, {high}]")
        return value


class DataConfig(Section):
    """Where the images are and how they become batches. Paths may be relative to the working directory."""

    train_dir: Path = Field(
        description="training images: one sub-directory per class, or the root that train_list's paths "
        "are relative to"
    )
    val_dir: Path = Field(description="validation images, laid out like train_dir")
    train_list: Path | None = Field(
        None,
        description="text file, one image per line: 'path' (class = its parent folder) or 'path label' "
        "(class name or index); paths relative to train_dir. null = scan train_dir",
    )
    val_list: Path | None = Field(None, description="like train_list, for val_dir")
    classes: list[str] | None = Field(
        None,
        description="class folder names to use, in label order; null = all sub-directories, sorted",
        json_schema_extra=SHAPES_CHECKPOINT,
    )
    class_list: Path | None = Field(
        None,
        description="text file with one class name per line (e.g. ImageNet-100's); like classes",
        json_schema_extra=SHAPES_CHECKPOINT,
    )
    exclude_list: Path | None = Field(
        None,
        description="text file of images to skip, one path per line (absolute or relative to the split "
        "directory), e.g. from `vigsp data check DIR --write-exclude FILE`",
    )
    image_size: int = Field(
        ge=8, description="square side in pixels fed to the model", json_schema_extra=SHAPES_CHECKPOINT
    )
    eval_crop_fraction: float = Field(
        0.875, gt=0, le=1, description="evaluation: resize the shorter side to image_size / this, centre-crop"
    )
    interpolation: Literal["linear", "cubic"] = Field("cubic", description="resampling for every resize")
    mean: tuple[float, float, float] = Field(IMAGENET_MEAN, description="per-channel mean of [0, 1] RGB")
    std: tuple[float, float, float] = Field(IMAGENET_STD, description="per-channel std of [0, 1] RGB")
    batch_size: int = Field(ge=1, description="images per rank per step (the DeepSpeed micro batch)")
    num_threads: int = Field(4, ge=1, description="DALI CPU worker threads per rank")
    prefetch: int = Field(2, ge=1, description="batches DALI prepares ahead of the one being used")
    decoder: Literal["auto", "cpu", "mixed"] = Field(
        "auto", description="JPEG decoding: mixed = nvJPEG on the GPU; auto = mixed when CUDA is available"
    )
    seed: int | None = Field(None, ge=0, description="data-order/augmentation seed; null = 0 (or run.seed)")
    augmentation: AugmentationConfig = Field(default_factory=AugmentationConfig)
    superpixel: SuperpixelConfig | None = Field(None, description="graph nodes from superpixels; null = none")
    max_nodes: int | None = Field(
        None,
        ge=1,
        description="nodes per image in a batch (padded); more segments than this is an error. "
        "null = 2 x superpixel.n_segments",
        json_schema_extra=SHAPES_CHECKPOINT,
    )
    max_edges: int | None = Field(
        None,
        ge=1,
        description="region-adjacency edges (i < j) per image in a batch (padded); more is an error. "
        "null = 3 x max_nodes - 6, the most a planar region graph can have",
        json_schema_extra=SHAPES_CHECKPOINT,
    )

    @field_validator("classes")
    @classmethod
    def _distinct_classes(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            repeated = sorted({name for name in value if value.count(name) > 1})
            if repeated:
                raise ValueError(f"class names must be distinct; repeated: {', '.join(repeated)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> DataConfig:
        if self.classes is not None and self.class_list is not None:
            raise ValueError("set data.classes or data.class_list, not both")
        if (
            self.superpixel is not None
            and self.max_nodes is not None
            and self.max_nodes < self.superpixel.n_segments
        ):
            raise ValueError(
                f"data.max_nodes ({self.max_nodes}) is below data.superpixel.n_segments "
                f"({self.superpixel.n_segments}): most images would overflow it; raise data.max_nodes"
            )
        return self

    @property
    def node_capacity(self) -> int:
        """max_nodes with its default filled in."""
        if self.max_nodes is not None:
            return self.max_nodes
        if self.superpixel is None:
            raise ValueError("data.max_nodes is only meaningful with data.superpixel")
        return 2 * self.superpixel.n_segments

    @property
    def edge_capacity(self) -> int:
        """max_edges with its default filled in."""
        # Superpixels are connected regions of the plane, so their adjacency graph is planar: E <= 3N - 6.
        return self.max_edges if self.max_edges is not None else max(3 * self.node_capacity - 6, 1)

    @property
    def resolved_seed(self) -> int:
        return self.seed if self.seed is not None else 0
