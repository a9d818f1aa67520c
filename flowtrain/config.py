"""Typed schemas for every config group, registered in Hydra's ConfigStore.

Each YAML option in ``conf/<group>/`` names its schema first in its defaults list
(``defaults: [/schema/<group>/<name>, _self_]``), so a typo in a key or a value of the
wrong type fails while Hydra composes the config, before any training.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from flowtrain.data.imagenet import ImageNetFormat
from flowtrain.data.images import TorchvisionName
from flowtrain.data.toy2d import Toy2DName
from flowtrain.dequant import NoiseCoupling
from flowtrain.flows.coupling import Block
from flowtrain.flows.flowpp_network import FlowppInit
from flowtrain.flows.glow import GlowNetwork
from flowtrain.flows.glow_coupling import GlowCoupling
from flowtrain.flows.mixture import Family
from flowtrain.flows.pixelcnn import Network
from flowtrain.search import register_optuna_preset


def config_dir() -> Path:
    """The YAML configs: inside the installed package, or at the top of a checkout."""
    packaged = Path(__file__).resolve().parent / "conf"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "conf"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"  # autocast: networks in bfloat16; transforms, log-dets and the loss in fp32


class Schedule(str, Enum):
    constant = "constant"
    cosine = "cosine"  # linear warm-up, then cosine decay to min_lr_ratio * lr


class Split(str, Enum):
    test = "test"
    val = "val"


class WeightDecayOn(str, Enum):
    all = "all"
    weight_scales = "weight_scales"  # the g of weight-normalized layers (RealNVP's L2)


class Task(str, Enum):
    train = "train"
    # bits/dim of the checkpoint named by ckpt=... on eval.split: eval.json, every
    # example's in eval_examples.npz, and pictures of them
    eval = "eval"
    sample = "sample"  # samples, pictures and (images) a latent interpolation from ckpt=...


# --- model -------------------------------------------------------------------------------


@dataclass
class MixtureCDFConfig:
    _target_: str = "flowtrain.flows.mixture_cdf.MixtureCDFFlow"
    n_components: int = 8
    family: Family = Family.gaussian


@dataclass
class ARFlowConfig:
    _target_: str = "flowtrain.flows.autoregressive.AutoregressiveFlow"
    n_components: int = 16
    family: Family = Family.gaussian
    hidden_features: int = 128
    hidden_layers: int = 2
    order: Optional[list[int]] = None  # noqa: UP045 - OmegaConf needs Optional, not X | None


@dataclass
class RealNVPConfig:
    _target_: str = "flowtrain.flows.realnvp.RealNVP"
    n_filters: int = 32
    n_blocks: int = 2
    checkerboard_in: int = 4
    channelwise: int = 3
    checkerboard_out: int = 3
    residual_block: Block = Block.basic  # basic: 3x3 -> 3x3; bottleneck: the seed's 1x1-3x3-1x1
    # 1: single-scale, shaped by the three counts above; more: the paper's multi-scale model
    scales: int = 1
    # p(x | class) on labelled data: the class labels condition the model (docs/CONFIG.md)
    conditional: bool = False


@dataclass
class GlowConfig:
    _target_: str = "flowtrain.flows.glow.Glow"
    # auto: the most levels, up to the paper's 3, that divide height and width
    levels: Any = "auto"
    steps: int = 8
    n_filters: int = 32
    n_blocks: int = 1  # residual blocks of the resnet network (the released one has none)
    network: GlowNetwork = GlowNetwork.resnet  # resnet | released (openai/glow's)
    coupling: GlowCoupling = GlowCoupling.affine  # affine | additive (network=released)
    # p(x | class) on labelled data: the class labels condition the model (docs/CONFIG.md)
    conditional: bool = False
    # conditional: the weight of Glow's class prediction from the top latent in the
    # training loss (--weight_y; the released conditional run: 0.01); 0: none
    weight_y: float = 0.0


@dataclass
class PixelCNNFlowConfig:
    _target_: str = "flowtrain.flows.pixelcnn.PixelCNNFlow"
    n_components: int = 8
    family: Family = Family.logistic
    n_filters: int = 32
    n_blocks: int = 3
    network: Network = Network.gated
    # p(x | class) on labelled data: the class labels condition the model (docs/CONFIG.md)
    conditional: bool = False


@dataclass
class FlowPlusPlusConfig:
    _target_: str = "flowtrain.flows.flowpp.FlowPlusPlus"
    n_filters: int = 32
    n_blocks: int = 2
    n_components: int = 8
    heads: int = 4
    dropout: float = 0.0
    # steps on column halves, then (after a squeeze) on channel halves, then column halves
    column_in: int = 4
    channelwise: int = 2
    column_out: int = 3
    # p(x | class) on labelled data: the class labels condition the model (docs/CONFIG.md)
    conditional: bool = False
    # released: the released data-dependent initialization of every layer (0.08 bits/dim
    # better on digits, docs/RESULTS.md); identity: every coupling starts as the identity
    # (zero output convolutions), the default before 2026-12-02
    init: FlowppInit = FlowppInit.released


@dataclass
class TarFlowConfig:
    _target_: str = "flowtrain.flows.tarflow.TarFlow"
    patch_size: int = 2  # p: non-overlapping p x p patches, one token of C p^2 values each
    width: int = 64  # the transformers' channels
    blocks: int = 4  # autoregressive flow blocks, token order reversed between them
    layers_per_block: int = 2  # transformer layers in each block's conditioner
    head_dim: int = 32  # channels per attention head (released: 64)
    expansion: int = 4  # feed-forward hidden width / width
    kv_cache: bool = True  # sampling reads one token per step with a key/value cache
    # > 0: every log-scale is m tanh(alpha / m), within (-m, m); 0: unbounded, as released
    max_log_scale: float = 0.0
    # p(x | class) on labelled data: the class labels condition the model (docs/CONFIG.md)
    conditional: bool = False
    # conditional: the share of training labels dropped (read as no class), which lets
    # sample.guidance steer samples; the released conditional runs use 0.1
    drop_label: float = 0.0


# --- data --------------------------------------------------------------------------------


@dataclass
class GMM1DConfig:
    _target_: str = "flowtrain.data.gmm1d.GaussianMixture1D"
    weights: list[float] = field(default_factory=lambda: [0.3, 0.5, 0.2])
    means: list[float] = field(default_factory=lambda: [-3.0, 0.0, 2.5])
    stds: list[float] = field(default_factory=lambda: [0.6, 1.0, 0.3])
    n_train: int = 20_000
    n_test: int = 5_000
    seed: int = 0
    standardize: bool = True
    n_val: int = 2_000  # validation points, drawn besides n_train; 0: none (no selection)


@dataclass
class Toy2DConfig:
    _target_: str = "flowtrain.data.toy2d.Toy2D"
    name: Toy2DName = Toy2DName.moons
    n_train: int = 20_000
    n_test: int = 5_000
    noise: Optional[float] = None  # noqa: UP045 - null: the set's own default
    seed: int = 0
    standardize: bool = True
    image_text: str = "FLOW"
    n_val: int = 2_000  # validation points, drawn besides n_train; 0: none (no selection)


@dataclass
class ArrayConfig:
    _target_: str = "flowtrain.data.array.ArrayData"
    path: str = MISSING
    standardize: bool = True
    # of the file's training examples; null: 10% of them; 0: none (no selection)
    n_val: Optional[int] = None  # noqa: UP045


@dataclass
class ImageArrayConfig:
    _target_: str = "flowtrain.data.array.ImageArrayData"
    path: str = MISSING
    levels: int = 256
    # of the file's training images; null: 10% of them; 0: none (no selection)
    n_val: Optional[int] = None  # noqa: UP045
    hflip: bool = False  # mirror training images left to right at random
    shift: float = 0.0  # > 0: random translations by up to this fraction of the size (Glow: 0.1)


@dataclass
class TorchvisionConfig:
    _target_: str = "flowtrain.data.images.TorchvisionImages"
    name: TorchvisionName = MISSING
    root: str = "data"
    download: bool = False
    n_val: int = 5_000  # of the training images; 0: none (no selection)
    hflip: bool = False  # mirror training images left to right at random (RealNVP on CIFAR-10)
    bits: int = 8  # < 8: keep that many bits per value (Glow's 5-bit models); 2**bits levels
    shift: float = 0.0  # > 0: random translations by up to this fraction of the size (Glow: 0.1)


@dataclass
class PhotoPatchesConfig:
    _target_: str = "flowtrain.data.images.PhotoPatches"
    size: int = 32
    n_test: int = 100
    n_val: int = 50
    seed: int = 0
    hflip: bool = False
    shift: float = 0.0  # > 0: random translations by up to this fraction of the size (Glow: 0.1)


@dataclass
class ImageFolderConfig:
    _target_: str = "flowtrain.data.image_folder.ImageFolderData"
    root: str = MISSING
    size: int = 32  # short side resized to this, then the centre crop
    channels: int = 3  # 1: grayscale, 3: RGB
    n_test: int = 100  # of a seeded permutation, unless test_root names a test folder
    test_root: Optional[str] = None  # noqa: UP045
    n_val: Optional[int] = None  # noqa: UP045 - of the training images; null: 10%; 0: none
    seed: int = 0
    hflip: bool = False
    shift: float = 0.0  # > 0: random translations by up to this fraction of the size (Glow: 0.1)


@dataclass
class ImageNetConfig:
    _target_: str = "flowtrain.data.imagenet.DownsampledImageNet"
    root: str = MISSING
    size: int = 32  # 32 or 64
    format: ImageNetFormat = ImageNetFormat.auto  # auto | folders (2016) | npz (2017)
    n_val: int = 10_000  # of the training images; 0: none
    hflip: bool = False
    shift: float = 0.0  # > 0: random translations by up to this fraction of the size (Glow: 0.1)


@dataclass
class DigitsConfig:
    _target_: str = "flowtrain.data.images.Digits"
    n_test: int = 297
    seed: int = 0
    n_val: int = 150  # of the 1500 training images; 0: none (no selection)
    hflip: bool = False  # a mirrored digit is rarely a digit; for experiments
    shift: float = 0.0  # > 0: random translations by up to this fraction of the size (Glow: 0.1)


# --- dequantization ----------------------------------------------------------------------


@dataclass
class NoDequantConfig:
    _target_: str = "flowtrain.dequant.NoDequantization"


@dataclass
class UniformDequantConfig:
    _target_: str = "flowtrain.dequant.UniformDequantization"
    logit_alpha: float = 0.05  # 0 turns the logit preprocessing off
    eval_samples: int = 1  # > 1: also an importance-weighted test estimate (test_bpd_iw)
    # the interval (x + u) / K is mapped onto before any logit: [0, 1] (the logit needs it),
    # [-1, 1] (TarFlow's)
    range: list[float] = field(default_factory=lambda: [0.0, 1.0])


@dataclass
class GaussianDequantConfig:
    _target_: str = "flowtrain.dequant.GaussianDequantization"
    sigma: float = 0.05  # noise std on the data scaled to range
    range: list[float] = field(default_factory=lambda: [-1.0, 1.0])
    denoise: bool = True  # samples take one score step x + sigma^2 grad log p(x)


@dataclass
class AutoDequantConfig:
    _target_: str = "flowtrain.dequant.auto_dequantization"
    logit_alpha: float = 0.05
    eval_samples: int = 1


@dataclass
class VariationalDequantConfig:
    _target_: str = "flowtrain.dequant.VariationalDequantization"
    logit_alpha: float = 0.05
    eval_samples: int = 16
    n_couplings: int = 4
    n_filters: int = 32
    n_blocks: int = 1
    context_channels: int = 16
    coupling: NoiseCoupling = NoiseCoupling.affine  # affine | mixture_logistic (Flow++'s)
    # mixture_logistic only:
    n_components: int = 8
    heads: int = 4
    dropout: float = 0.0
    init: FlowppInit = FlowppInit.identity  # identity | released, as model.init for flowpp


# --- optimizer ---------------------------------------------------------------------------


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule; ``_target_`` is a torch.optim class."""

    _target_: str = MISSING
    lr: float = MISSING  # the training regime's (conf/train/): it depends on the data
    weight_decay: float = 0.0
    schedule: Schedule = Schedule.cosine
    warmup_steps: int = 100
    # set: the warm-up lasts this many passes over the training split instead (steps of
    # train.batch_size, counted from the data set's size when the run starts)
    warmup_epochs: float | None = None
    min_lr_ratio: float = 0.01
    # which parameters weight_decay applies to: all, or weight_scales (only the scales g
    # of weight-normalized layers: RealNVP's "L2 regularization on the weight scale")
    weight_decay_on: WeightDecayOn = WeightDecayOn.all


@dataclass
class AdamConfig(OptimConfig):
    _target_: str = "torch.optim.Adam"
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class AdamWConfig(AdamConfig):
    _target_: str = "torch.optim.AdamW"
    weight_decay: float = 0.01


@dataclass
class AdamaxConfig(AdamConfig):
    """Adam with an infinity norm in place of the second moment: Glow's optimizer."""

    _target_: str = "torch.optim.Adamax"


@dataclass
class SGDConfig(OptimConfig):
    _target_: str = "torch.optim.SGD"
    momentum: float = 0.9
    nesterov: bool = False


# --- top level ---------------------------------------------------------------------------


@dataclass
class TrainConfig:
    steps: int = 5000
    batch_size: int = 256
    eval_every: int = 1000
    sample_every: int = 1000
    checkpoint_every: int = 1000
    log_every: int = 50
    grad_clip: float = 10.0  # max global gradient norm; 0 turns clipping off
    eval_batch_size: int = 1024
    n_samples: int = 4096  # drawn for each point figure; image grids show at most 64
    sample_temperature: float = 1.0  # base samples scaled by this (Gaussian bases)
    # A step whose loss or gradient norm is NaN or infinite is skipped (no update) and
    # counted; this many in a row stop the run.
    max_nonfinite: int = 20
    precision: Precision = Precision.fp32
    compile: bool = False  # torch.compile the model's forward (the first steps compile it)
    # > 0: keep an exponential moving average of the weights (model and learned
    # dequantizer) with this decay; evaluation, best.pt and task=eval|sample use it
    ema_decay: float = 0.0
    # a class-conditional model's sample grid: one row for each of these classes (names
    # or indices, at most 10); null: the first 10
    sample_classes: Optional[list[Any]] = None  # noqa: UP045
    # torchrun: how long a rank waits in a collective (an all-reduce) for the others before
    # it gives up; long, since ranks wait while rank 0 evaluates, draws samples and saves
    dist_timeout_s: float = 7200.0


@dataclass
class SampleConfig:
    """What ``task=sample`` draws: ``n`` samples at ``temperature`` (Gaussian bases) from a
    generator seeded with ``seed``; for images also ``interpolation_pairs`` rows of
    ``interpolation_steps`` images between pairs of test images, decoded from a straight
    line between their latents. A class-conditional model draws them of ``label``."""

    n: int = 64
    temperature: float = 1.0
    seed: int = 0
    interpolation_steps: int = 8
    interpolation_pairs: int = 4
    # a class-conditional model: every sample of this class (a name or an index); null: one
    # row for each of the first 10 classes
    label: Any = None
    # a class-conditional TarFlow: classifier-free guidance weight (0: none), constant or
    # growing over the tokens (annealed: the released FID evaluation's 2.3)
    guidance: float = 0.0
    guidance_annealed: bool = False


@dataclass
class EvalConfig:
    """What ``task=eval`` measures: the test split (as the training run did at its end) or
    the validation split (as it did during training)."""

    split: Split = Split.test


@dataclass
class Config:
    model: Any = MISSING
    data: Any = MISSING
    dequant: Any = MISSING
    optim: Any = MISSING
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    device: Device = Device.auto
    # CPU threads for torch. null: torch's default, or, under the joblib launcher, the
    # cores shared out between its parallel jobs so they don't oversubscribe the machine.
    threads: int | None = None
    # false: a fresh run; true: continue from this run folder's checkpoints/last.pt;
    # a path: continue from that checkpoint.
    resume: Any = False
    # train a model, or evaluate / sample from the checkpoint at ckpt (a .pt file), whose
    # stored config rebuilds the model: flowtrain task=eval ckpt=RUN/checkpoints/best.pt
    task: Task = Task.train
    ckpt: str | None = None
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


SCHEMAS: dict[str, dict[str, type]] = {
    "model": {"mixture_cdf": MixtureCDFConfig, "arflow2d": ARFlowConfig,
              "realnvp": RealNVPConfig, "glow": GlowConfig,
              "pixelcnn_arflow": PixelCNNFlowConfig, "flowpp": FlowPlusPlusConfig,
              "tarflow": TarFlowConfig},
    "data": {"gmm1d": GMM1DConfig, "toy2d": Toy2DConfig, "array": ArrayConfig,
             "image_array": ImageArrayConfig,
             "torchvision": TorchvisionConfig, "digits": DigitsConfig,
             "photo_patches": PhotoPatchesConfig, "image_folder": ImageFolderConfig,
             "imagenet": ImageNetConfig},
    "dequant": {"none": NoDequantConfig, "uniform": UniformDequantConfig,
                "auto": AutoDequantConfig, "variational": VariationalDequantConfig,
                "gaussian": GaussianDequantConfig},
    "optim": {"adam": AdamConfig, "adamw": AdamWConfig, "adamax": AdamaxConfig,
              "sgd": SGDConfig},
}


def config_group_options() -> str:
    """One line per user-facing config group with its options, for ``flowtrain --help``.

    Read from the YAML files rather than Hydra's listing, which would also show the
    ``schema/`` groups that only exist to validate them.
    """
    root = config_dir()
    lines = []
    for group in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "schema"):
        options = sorted(f.stem for f in group.glob("*.yaml"))
        if options:
            lines.append(f"  {group.name}: {', '.join(options)}")
    return "\n".join(lines)


def folder_name(overrides: str, max_length: int = 200) -> str:
    """A sweep sub-folder name from Hydra's ``override_dirname`` ("model=glow,optim.lr=0.001"):
    path separators and other characters a folder name should not hold become "_", and a
    very long name is cut (the job number in front keeps it unique)."""
    safe = re.sub(r"[^A-Za-z0-9=.,+\-_]", "_", overrides)
    return safe[:max_length] or "defaults"


def run_folder(timestamped: str) -> str:
    """The run folder under ``outputs/``: its timestamp, except under torchrun, where every
    rank composes the config at its own moment; there all ranks share the rendezvous id."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")  # "none": no shared id
    if run_id != "none" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"torchrun/{folder_name(run_id)}"
    return timestamped


def register_configs() -> None:
    """Put every schema in the ConfigStore (idempotent) and the help resolver in OmegaConf."""
    store = ConfigStore.instance()
    store.store(name="config_schema", node=Config)
    for group, options in SCHEMAS.items():
        for name, schema in options.items():
            store.store(group=f"schema/{group}", name=name, node=schema)
    OmegaConf.register_new_resolver(
        "flowtrain_groups", config_group_options, replace=True, use_cache=False
    )
    OmegaConf.register_new_resolver("flowtrain_folder_name", folder_name, replace=True)
    OmegaConf.register_new_resolver("flowtrain_run_folder", run_folder, replace=True)
    register_optuna_preset()
