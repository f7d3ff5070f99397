"""The experiment's schema: frozen dataclasses per concern (data, model, train, callbacks, compare).

Every key is checked when a config is built (:mod:`cnnlab.config.loading`): an unknown key, a value of the
wrong type or an invalid choice is a one-line error naming the key and what is valid.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields

from cnnlab.errors import CnnlabError

PADDING_MODES = ("zeros", "reflect", "nearest")
CACHE_FEATURES = ("auto", "on", "off")
DEFAULT_LR = 1e-3  # Keras's Adam default: ``train.lr`` when neither the config nor the model's metadata sets one


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations to apply (all off by default); YAML keys are the field names.

    Attributes:
        hflip: mirror left-right with probability 1/2.
        vflip: mirror top-bottom with probability 1/2 (for data without an "up", e.g. microscopy).
        crop_padding: pad by this many pixels and crop back to the original size at a random offset,
            i.e. a whole-pixel shift of up to ± this many pixels per axis (the CIFAR-10 classic is 4).
        translate: sub-pixel shift of up to ± this fraction of the width/height (0.1 = 10%).
        zoom: scale by a factor drawn from [1 - zoom, 1 + zoom] (0.1 = ±10%).
        rotation: rotate by up to ± this many degrees.
        brightness: multiply by a factor drawn from [1 - brightness, 1 + brightness].
        contrast: scale the distance from each image's mean by a factor in [1 - contrast, 1 + contrast].
        noise: add Gaussian noise with this standard deviation, in [0, 1] pixel units (0.02 ≈ 5/255).
        cutout: zero one square of this side (pixels) per image, placed wholly inside it.
        padding_mode: what fills pixels shifted in from outside: ``zeros`` (black), ``reflect`` (mirror of
            the border) or ``nearest`` (the border pixel repeated: Keras ``ImageDataGenerator``'s default
            ``fill_mode``).
    """

    hflip: bool = False
    vflip: bool = False
    crop_padding: int = 0
    translate: float = 0.0
    zoom: float = 0.0
    rotation: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    noise: float = 0.0
    cutout: int = 0
    padding_mode: str = field(default="zeros", metadata={"choices": PADDING_MODES})

    def __post_init__(self) -> None:
        if self.padding_mode not in PADDING_MODES:
            raise CnnlabError(f"`data.augment.padding_mode`: {self.padding_mode!r} is not one of "
                              f"{', '.join(PADDING_MODES)}")
        for name in ("crop_padding", "translate", "zoom", "rotation", "brightness", "contrast", "noise",
                     "cutout"):
            if getattr(self, name) < 0:
                raise CnnlabError(f"data.augment.{name} is {getattr(self, name)}; use 0 (off) or a positive value")
        for name in ("zoom", "brightness", "contrast"):
            if getattr(self, name) >= 1:
                raise CnnlabError(f"data.augment.{name} is {getattr(self, name)}; it is a ± range, use a value "
                                  "below 1 (e.g. 0.2)")
        if self.translate >= 1:
            raise CnnlabError(f"data.augment.translate is {self.translate}; it is a fraction of the image size, "
                              "use a value below 1 (e.g. 0.1)")

    @property
    def enabled(self) -> bool:
        """Whether any augmentation is on."""
        return any(getattr(self, f.name) for f in fields(self) if f.name != "padding_mode")


def _in(default, *, ge=None, gt=None, le=None, lt=None):
    """A numeric field with its valid range (checked when a config is built, with a one-line error)."""
    return field(default=default, metadata={"range": (ge, gt, le, lt)})


def _choice(default: str, *choices: str):
    return field(default=default, metadata={"choices": (default, *choices)})


@dataclass(frozen=True)
class DataConfig:
    """What to train on.

    Attributes:
        dataset: a registered dataset (``cnnlab datasets list``) or ``folder:PATH`` for a folder of images.
        data_dir: a folder holding ``<dataset>/<official files>``; default ``$CNNLAB_DATA``, then the cache.
        val_split: 0 validates on the test set each epoch (as the tutorials do); a fraction in (0, 1) or a
            count (e.g. 10000 for tutorial 2's 50k/10k) holds that many training images out instead.
        split_seed: seed of the validation split.
        normalize: ``auto`` is ``imagenet`` with pretrained weights and ``unit`` otherwise; ``unit``
            divides by 255 (the tutorials); ``standard`` uses the training set's per-channel mean/std;
            ``imagenet`` the ImageNet statistics; ``raw`` feeds the 0..255 pixel values unscaled (as code
            that forgot to divide by 255 did: its learning rate and L2 strength mean what they meant there).
        image_size: resize folder images to this size (pixels, square); registered datasets keep theirs.
        grayscale: folder images as 1 channel (default: RGB).
        labels: folder labels from ``subfolders``, ``filename`` (with ``pattern``) or ``csv`` (default auto).
        pattern: regex whose first group is the label in a file name (``cat.123.jpg`` → cat by default).
        csv: a ``file,label`` CSV for folder datasets.
        file_column: the CSV column (header name) holding the file, like Keras's ``x_col``; by default a
            column named file/filename/path/image..., or the first of two.
        label_column: the CSV column holding the label, like Keras's ``y_col``; by default
            label/class/category..., or the second of two.
        resize: ``squash`` (plain resize) or ``crop`` (centre-crop to square first).
        max_pixels: the most pixels one folder image may decode to; larger files are skipped as
            decompression bombs (JPEGs are judged by their reduced decode). Default ``$CNNLAB_MAX_PIXELS``,
            else 100 MP.
        augment: training-time augmentation (off by default).
    """

    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    val_split: float = _in(0.0, ge=0)
    split_seed: int = 0
    normalize: str = _choice("auto", "unit", "standard", "imagenet", "raw")
    image_size: int | None = _in(None, ge=1, le=4096)
    grayscale: bool = False
    labels: str = _choice("auto", "subfolders", "filename", "csv")
    pattern: str | None = None
    csv: str | None = None
    file_column: str | None = None
    label_column: str | None = None
    resize: str = _choice("squash", "crop")
    max_pixels: int | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass(frozen=True)
class ModelConfig:
    """Which network.

    Attributes:
        name: a registered model (``cnnlab models``); ignored when ``layers`` is given.
        layers: a Keras-style layer list (see ``cnnlab.models.spec``) — edit it to do the exercises.
        options: extra keyword arguments for the registered builder (e.g. ``{dropout: 0.3}``).
        pretrained: start from the official ImageNet weights of ``name`` (downloaded; or read from ``weights``
            when that is set), with their preprocessing (mean/std, input size, builder options).
        weights: a local weight file (.pth / .safetensors) to start from. A file laid out as ``name``'s
            published ImageNet weights sets ``pretrained`` itself (it is those weights, so it gets their
            preprocessing); any other is scaled as ``data.normalize`` says.
        freeze: ``backbone`` trains only the classifier head (transfer learning).
        freeze_epochs: with ``freeze: backbone``, unfreeze the backbone after this many epochs (fine-tuning;
            0 keeps it frozen for the whole run).
        backbone_lr: learning-rate multiplier for the backbone (fastai's discriminative rates); 1 trains
            everything at ``train.lr``.
        train_bn: with a frozen backbone, keep its BatchNorm layers training (fastai's ``train_bn``); by
            default they run in inference mode and nothing of the backbone changes (Keras's rule).
    """

    name: str | None = "cnn_64x2"
    layers: tuple[dict, ...] | None = None
    options: dict = field(default_factory=dict)
    pretrained: bool = False
    weights: str | None = None
    freeze: str | None = field(default=None, metadata={"choices": (None, "backbone")})
    freeze_epochs: int = _in(0, ge=0)
    backbone_lr: float = _in(1.0, ge=0)
    train_bn: bool = False


@dataclass(frozen=True)
class TrainConfig:
    """How to train.

    Attributes:
        epochs: passes over the training set.
        batch_size: images per step.
        steps_per_epoch: at most this many steps make an epoch (Keras's ``fit(steps_per_epoch=...)``): each
            epoch trains on the first ``steps_per_epoch * batch_size`` images of its own shuffled order, a fresh
            sample of the training set each time, and then validates; None = one pass over the training set.
            Fractions of passes, e.g. 1.5 passes in 3 shorter epochs.
        validation_freq: validate after every this many epochs (Keras's ``fit(validation_freq=N)``: after
            epochs N, 2N, ...) and, unlike Keras, always after the last planned one; the epochs between record
            no validation metrics, which monitors (early stopping, best checkpoint, ``stop_at``) skip. A run that
            a callback stops earlier ends on that epoch, validated or not (the final test runs either way).
            Saves the validation passes of short-epoch recipes; 1 = every epoch.
        optimizer: adam, adamw, sgd (``momentum``, ``nesterov``) or rmsprop.
        lr: peak learning rate. Unset (None, ``lr: null``) means "the model's default": a registered
            model's metadata rate for Adam/AdamW (``ModelMeta.lr``, e.g. 1e-4 for VGG without BatchNorm),
            else :data:`DEFAULT_LR`. A run records the rate it used in its config.yaml.
        momentum: SGD / RMSprop momentum.
        nesterov: Nesterov momentum for SGD.
        weight_decay: decay as the optimiser applies it (decoupled for adamw).
        l2: Keras-style L2 penalty ``l2 * sum(w**2)`` on conv/dense kernels, added to the loss.
        label_smoothing: cross-entropy label smoothing.
        ema: keep an exponential moving average of the weights with this largest per-step decay (e.g. 0.999,
            about the last 1,000 steps; TensorFlow's ``ExponentialMovingAverage`` with its ``num_updates``
            warm-up); 0 = off. The average is what each epoch validates, what checkpoints and the run keep.
        schedule: constant, onecycle or cosine (per step, after ``warmup_epochs`` of linear warm-up).
        warmup_epochs: linear warm-up length (cosine / constant).
        seed: makes a CPU run repeatable (init, shuffling, dropout, augmentation).
        precision: auto (bf16 autocast where the CPU has AVX512-BF16/AMX or on CUDA), bf16 or fp32.
        channels_last: NHWC memory format for convolutions.
        eval_batch_size: batch size of evaluation.
        device: auto, cpu or cuda.
        threads: CPU threads (0 = one per available core).
        tta: test-time augmentation of the final test and ``cnnlab evaluate`` (per-epoch validation stays
            plain, as Keras's): ``hflip`` averages the flipped prediction.
        nproc: processes to start on this machine (data-parallel, ``DistributedDataParallel``); 1 trains in
            this process. Under ``torchrun`` the launcher decides and this is ignored.
        dist_timeout: seconds a distributed collective waits for the other processes before the job fails
            (a rank that died ends the job this soon, not after PyTorch's 30 minutes).
        sync_bn: BatchNorm statistics over the global batch (``SyncBatchNorm``, CUDA only; on CPU each process
            normalises by its own batch and DDP broadcasts rank 0's running statistics).
        cache_features: with ``model.freeze: backbone`` for the whole run (``freeze_epochs`` 0), no
            ``model.train_bn`` and no ``data.augment``, the frozen backbone's output for the training and
            validation images is computed once and every epoch trains the head on it (the same result, the
            backbone's cost paid once: :mod:`cnnlab.training.features`). ``auto`` (default) does so where it
            applies and otherwise says why not in one line; ``on`` insists (an error where it cannot apply);
            ``off`` recomputes the backbone every epoch. YAML's ``on``/``off``/``true``/``false`` all work.
    """

    epochs: int = _in(5, ge=1)
    batch_size: int = _in(32, ge=1)
    steps_per_epoch: int | None = _in(None, ge=1)
    validation_freq: int = _in(1, ge=1)
    optimizer: str = _choice("adam", "adamw", "sgd", "rmsprop")
    lr: float | None = _in(None, gt=0)
    momentum: float = _in(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = _in(0.0, ge=0)
    l2: float = _in(0.0, ge=0)
    label_smoothing: float = _in(0.0, ge=0, lt=1)
    ema: float = _in(0.0, ge=0, lt=1)
    schedule: str = _choice("constant", "onecycle", "cosine")
    warmup_epochs: float = _in(0.0, ge=0)
    seed: int = 0
    precision: str = _choice("auto", "bf16", "fp32")
    channels_last: bool = True
    eval_batch_size: int = _in(1000, ge=1)
    device: str = _choice("auto", "cpu", "cuda")
    threads: int = _in(0, ge=0)
    tta: str | None = field(default=None, metadata={"choices": (None, "hflip")})
    nproc: int = _in(1, ge=1, le=1024)
    dist_timeout: float = _in(60.0, gt=0)
    sync_bn: bool = False
    cache_features: str | bool = "auto"

    def __post_init__(self) -> None:
        value = self.cache_features
        if isinstance(value, bool):  # YAML 1.1 reads on/off as booleans: keep the word the user meant
            object.__setattr__(self, "cache_features", "on" if value else "off")
        elif value not in CACHE_FEATURES:
            raise CnnlabError(f"`train.cache_features`: {value!r} is not one of {', '.join(CACHE_FEATURES)}")

    @property
    def peak_lr(self) -> float:
        """``lr``, or :data:`DEFAULT_LR` when unset (a run resolves an unset rate from its model first)."""
        return DEFAULT_LR if self.lr is None else self.lr


@dataclass(frozen=True)
class CallbacksConfig:
    """When to stop and what to keep.

    Attributes:
        stop_at: stop once a metric reaches a target, e.g. ``[val_acc=0.91]`` or ``[loss=0.3]``
            (accuracies stop at ≥, losses at ≤; ``loss``/``acc`` mean the training values).
        early_stopping: patience in epochs without improvement of ``monitor`` (0 = off).
        monitor: metric for early stopping and the best checkpoint.
        mode: ``min`` or ``max``: the direction in which ``monitor`` improves; ``auto`` (Keras's default)
            takes it from the metric (losses ``min``, accuracies ``max``).
        min_delta: smallest change of ``monitor`` that counts as an improvement.
        restore_best: at the end, keep the weights of the best epoch (by ``monitor``).
        tensorboard: write TensorBoard event files to ``RUN_DIR/tensorboard/`` (needs ``cnnlab[tensorboard]``).
        mlflow: log to this MLflow tracking store: a URI (``sqlite:///mlflow.db``, ``http://host:5000``) or a
            local ``.db`` file or folder (a SQLite store there); null = off (needs ``cnnlab[mlflow]``).
        log_every_n_steps: the loggers also record the training loss and learning rate every this many
            optimiser steps (0 = per epoch only).
        checkpoint_every: also save ``checkpoints/last`` part-way through an epoch, with the position in its
            data order, so that a resume continues from that batch (Keras's ``BackupAndRestore(save_freq)``):
            a time of training since the last checkpoint (``30s``, ``10min``, ``2h``) or a number of steps
            (``500steps`` or ``500``); ``0`` or ``off`` saves at epoch ends only. The default, ``5min``, only
            fires in epochs longer than five minutes (each epoch's end saves anyway).
    """

    stop_at: tuple[str, ...] = ()
    early_stopping: int = _in(0, ge=0)
    monitor: str = _choice("val_loss", "val_acc", "train_loss", "train_acc")
    mode: str = _choice("auto", "min", "max")
    min_delta: float = _in(0.0, ge=0)
    restore_best: bool = False
    tensorboard: bool = False
    mlflow: str | None = None
    log_every_n_steps: int = 50
    checkpoint_every: str | int | bool = "5min"

    def __post_init__(self) -> None:
        if self.log_every_n_steps < 0:
            raise CnnlabError(f"callbacks.log_every_n_steps is {self.log_every_n_steps}; use 0 (per epoch only) "
                              "or a number of steps")
        if self.mlflow is not None and not self.mlflow.strip():
            raise CnnlabError("callbacks.mlflow is empty; give a tracking URI (e.g. sqlite:///mlflow.db) or null")
        parse_every(self.checkpoint_every, "callbacks.checkpoint_every")  # a one-line error now, not mid-run


_UNITS = {"s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0}


def parse_every(value: str | int | bool, key: str) -> tuple[str, float] | None:
    """``("steps", n)`` or ``("seconds", t)`` for a checkpoint cadence, or None when it is off.

    Accepts an int of steps, ``"500steps"``, ``"30s"``, ``"10min"``, ``"1.5h"``; ``0``, ``"0"``, ``"off"``
    and ``false`` mean off.

    Raises:
        CnnlabError: anything else (one line naming ``key``).
    """
    if value is False or value == 0:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return ("steps", float(value))
    text = str(value).strip().lower().replace(" ", "") if isinstance(value, str) else ""
    if text in ("off", "0", "none", "no"):
        return None
    steps = re.fullmatch(r"(\d+)steps?", text)
    if steps and int(steps.group(1)) > 0:
        return ("steps", float(steps.group(1)))
    time = re.fullmatch(r"(\d+(?:\.\d+)?)(s|sec|min|m|h)", text)
    if time and float(time.group(1)) > 0:
        return ("seconds", float(time.group(1)) * _UNITS[time.group(2)])
    raise CnnlabError(f"`{key}`: {value!r} is neither a time nor a number of steps; write e.g. 10min, 30s, 2h, "
                      "500steps, 500, or 0 for epoch ends only")


@dataclass(frozen=True)
class CompareConfig:
    """Variants that ``cnnlab compare`` runs from this config (training ignores this section).

    Attributes:
        vary: ``{key.path: [v1, v2, ...]}``; each value gives one variant (several keys: every combination).
        configs: other YAML files to run beside this one (paths relative to this file).
    """

    vary: dict = field(default_factory=dict)
    configs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    """One experiment: data, model, training and callbacks."""

    name: str = ""
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
