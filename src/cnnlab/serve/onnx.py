"""A run's final model as an ONNX file, checked for parity with PyTorch on the run's own test images.

The graph takes ``input``: float32 (N, C, H, W), the image already normalised the run's way,
``(uint8 / 255 - mean) / std`` per channel, and returns ``logits`` and ``probs`` (their softmax), both
(N, classes). Everything needed to use the file without the run directory is in its metadata_props
(see :data:`META`): the normalisation, the class names, the input shape and the cnnlab version, plus a
hash of the weights it was exported from, so ``predict --engine onnx`` notices a retrained run.

The exporter is torch's TorchScript-based one (``dynamo=False``): the torch.export-based exporter,
the default since torch 2.9, needs ``onnxscript``, and the TorchScript one exports every model we
register (spec models, ResNet, VGG, ...) to plain Conv/Gemm/Pool graphs that onnxruntime optimises well.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnnlab._version import __version__
from cnnlab.data.prepare import load_test_data, relocate
from cnnlab.errors import CnnlabError, one_of
from cnnlab.io import atomic_path, file_digest
from cnnlab.runs.loaded import load_run
from cnnlab.runs.loggers import publish
from cnnlab.serve.engines import ort_session, run_session
from cnnlab.serve.quantize import DEFAULT_MAX_DROP, QUANTIZE, QuantResult, int8_path, quantize_run

FORMATS = ("onnx",)
ONNX_FILE = "model.onnx"
DEFAULT_OPSET = 17
# 11 is the oldest opset whose Pad/Softmax/Resize semantics match torch's everywhere; 20 is the newest the
# TorchScript exporter of torch 2.13 writes.
OPSETS = range(11, 21)
PARITY_LIMIT = 1e-4  # max |p_torch - p_onnx| over the softmax probabilities
PARITY_IMAGES = 256

# metadata_props keys (all values are strings; lists/dicts are JSON)
META = {
    "version": "cnnlab.version",
    "classes": "cnnlab.classes",
    "input_shape": "cnnlab.input_shape",  # [C, H, W]
    "mean": "cnnlab.normalize.mean",  # per channel, in [0, 1] units
    "std": "cnnlab.normalize.std",
    "model": "cnnlab.model",
    "weights_sha256": "cnnlab.weights_sha256",
    "batch": "cnnlab.batch",  # "dynamic" or the fixed batch size
}
INPUT_DOC = "input: float32 (N, C, H, W) = (uint8 pixels / 255 - mean) / std per channel; outputs: logits, probs"

Log = Callable[[str], None]


@dataclass
class OnnxInfo:
    """What an exported file's metadata says about its input and output."""

    classes: tuple[str, ...]
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    version: str
    model: str = ""
    weights_sha256: str = ""
    batch: str = "dynamic"


@dataclass
class ExportResult:
    """A finished export: where, and how close onnxruntime came to PyTorch."""

    path: Path
    max_diff: float
    images: int
    source: str  # "test images" or why random images stood in
    opset: int
    batch: str
    int8: QuantResult | None = None  # with `quantize="int8"`: the quantised file and both accuracies

    @property
    def parity_line(self) -> str:
        limit = f"{PARITY_LIMIT:.0e}".replace("e-0", "e-")  # 1e-4, not 0.0001 or 1e-04
        return f"parity: max abs diff {self.max_diff:.1e} over {self.images} {self.source} (limit {limit})"


class ParityError(CnnlabError):
    """onnxruntime's probabilities differ from PyTorch's by more than :data:`PARITY_LIMIT`."""

    def __init__(self, result: ExportResult) -> None:
        super().__init__(f"{result.parity_line}: the ONNX graph does not reproduce the model; "
                         f"{result.path} was not written (report this with the run's config)")
        self.result = result


class _WithProbs(nn.Module):
    """The classifier plus its softmax, so the file serves probabilities without a post-processing step."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(x)
        return logits, logits.softmax(1)


class _BinnedAvgPool(nn.Module):
    """``nn.AdaptiveAvgPool2d`` as two matrix products, for sizes the ONNX exporter refuses.

    The exporter only handles adaptive pooling whose output size divides the input size (it becomes a
    plain AveragePool). Otherwise (e.g. AlexNet's 6x6 pool over a 3x3 map of a small input) each output
    cell is the mean of PyTorch's bin ``[floor(i*H/oh), ceil((i+1)*H/oh))``; with fixed shapes per export
    that is ``Ph @ x @ Pw^T`` with constant averaging matrices: exact up to float rounding.
    """

    def __init__(self, output_size) -> None:
        super().__init__()
        self.output_size = output_size if isinstance(output_size, tuple) else (output_size, output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = int(x.shape[-2]), int(x.shape[-1])
        oh, ow = (o if o is not None else s for o, s in zip(self.output_size, (h, w), strict=True))
        if h % oh == 0 and w % ow == 0:
            return nn.functional.adaptive_avg_pool2d(x, (oh, ow))
        return _bins(oh, h, x.dtype) @ x @ _bins(ow, w, x.dtype).t()


def _bins(out: int, size: int, dtype: torch.dtype) -> torch.Tensor:
    """(out, size) matrix whose row i averages PyTorch's i-th adaptive-pooling bin."""
    m = torch.zeros(out, size, dtype=dtype)
    for i in range(out):
        lo, hi = (i * size) // out, -(-(i + 1) * size // out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


def exportable(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) with the layers the exporter handles badly swapped for equivalents.

    * ``nn.AdaptiveAvgPool2d`` becomes :class:`_BinnedAvgPool`.

    The parity check confirms the copy computes what the original does.
    """
    clone = copy.deepcopy(model).eval()
    for m in clone.modules():
        for name, child in m.named_children():
            if isinstance(child, nn.AdaptiveAvgPool2d):
                setattr(m, name, _BinnedAvgPool(child.output_size))
    return clone


@contextlib.contextmanager
def _quiet_output() -> Iterator[None]:
    """Points file descriptors 1 and 2 at a scratch file for the duration.

    On a failure the TorchScript exporter's C++ side prints the whole traced graph (hundreds of lines)
    straight to the process's stdout before raising; the error we raise says what matters.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        for fd in saved:
            os.close(fd)


def parse_batch(batch: str | int) -> int | None:
    """``"dynamic"`` → None, ``"8"`` / 8 → 8."""
    if str(batch).lower() == "dynamic":
        return None
    try:
        n = int(batch)
    except ValueError:
        n = 0
    if n < 1:
        raise CnnlabError(f"`batch` {batch!r}: expected dynamic or a positive batch size like 1 or 64")
    return n


def export_onnx(
    run_dir: str | Path,
    *,
    out: str | Path | None = None,
    opset: int = DEFAULT_OPSET,
    batch: str | int = "dynamic",
    images: int = PARITY_IMAGES,
    data_dir: str | None = None,
    quantize: str | None = None,
    max_drop: float = DEFAULT_MAX_DROP,
    log: Log = print,
) -> ExportResult:
    """Exports a run's final model to ONNX, checks the file, and proves parity on the run's test images.

    Args:
        run_dir: a run directory written by ``cnnlab train``.
        out: file to write (default ``RUN_DIR/model.onnx``).
        opset: ONNX opset version.
        batch: ``"dynamic"`` (any batch size) or a fixed batch size.
        images: how many test images (at most) to compare PyTorch and onnxruntime on.
        data_dir: where the run's dataset lives, if not where it was trained from.
        quantize: ``"int8"`` also writes ``model.int8.onnx`` (beside ``out``), statically quantised
            (see :mod:`cnnlab.serve.quantize`) and checked on the whole test set.
        max_drop: test-accuracy points int8 may lose against fp32 before the export is refused.
        log: receives the parity line, the int8 accuracy line and notes.

    Raises:
        ParityError: probabilities differ by more than :data:`PARITY_LIMIT`; nothing is written.
        CnnlabError: not a run, bad opset/batch/quantize, a model the exporter cannot handle, or int8 losing
            more than ``max_drop`` points (nothing is written then either).
    """
    if quantize is not None and quantize not in QUANTIZE:
        raise one_of("quantize", quantize, QUANTIZE)

    if opset not in OPSETS:
        raise CnnlabError(f"`opset` {opset} is not supported; use {OPSETS.start}..{OPSETS.stop - 1} "
                          f"(default {DEFAULT_OPSET})")
    fixed = parse_batch(batch)
    if images < 1:
        raise CnnlabError("the parity check needs at least 1 image")
    lr = load_run(run_dir)
    path = Path(out).expanduser() if out else lr.run.file(ONNX_FILE)
    if path.is_dir():
        raise CnnlabError(f"`out` {path} is a folder; give a file name like {path / ONNX_FILE}")
    props = {
        META["version"]: __version__,
        META["classes"]: json.dumps(list(lr.classes)),
        META["input_shape"]: json.dumps(list(lr.input_shape)),
        META["mean"]: json.dumps(list(lr.normalizer.mean)),
        META["std"]: json.dumps(list(lr.normalizer.std)),
        META["model"]: lr.cfg.model.name or "layers",
        META["weights_sha256"]: file_digest(lr.run.weights_path(), "sha256"),
        META["batch"]: str(fixed or "dynamic"),
    }
    # a unique scratch name beside the target: concurrent exports never share it; nothing is written on failure
    with atomic_path(path) as tmp:
        write_onnx(lr.model, lr.input_shape, tmp, opset=opset, batch=fixed, props=props)
        x, source = parity_images(lr, images, data_dir)
        diff = max_prob_diff(lr.model, lr.normalizer, tmp, x, fixed)
        result = ExportResult(path, diff, len(x), source, opset, str(fixed or "dynamic"))
        if not diff <= PARITY_LIMIT:  # also catches NaN
            raise ParityError(result)
        log(result.parity_line)
        if quantize:  # inside the fp32 file's block: a refused int8 leaves neither file behind
            with atomic_path(int8_path(path)) as qtmp:
                result.int8 = quantize_run(lr, tmp, qtmp, int8_path(path), props, data_dir, max_drop)
            log(result.int8.line)
    # the run's MLflow run, when it logs to one, gets the files too
    publish(lr.run, [path] + ([result.int8.path] if result.int8 else []), log=log)
    return result


def write_onnx(model: nn.Module, input_shape: tuple[int, int, int], path: str | Path, *,
               opset: int = DEFAULT_OPSET, batch: int | None = None, props: dict[str, str] | None = None) -> None:
    """Writes ``model`` (eval mode, fp32) as a checked ONNX file with outputs ``logits`` and ``probs``.

    Args:
        model: a classifier mapping float (N, C, H, W) to logits; it is copied, never changed.
        input_shape: (C, H, W).
        path: the file to write.
        opset: ONNX opset version.
        batch: a fixed batch size, or None for a dynamic batch dimension.
        props: metadata_props to store (see :data:`META`).

    Raises:
        CnnlabError: the exporter cannot handle the model, or the checker rejects the graph.
    """
    import onnx

    example = torch.zeros(batch or 1, *input_shape)
    dynamic = None if batch else {"input": {0: "batch"}, "logits": {0: "batch"}, "probs": {0: "batch"}}
    try:
        with warnings.catch_warnings(), _quiet_output():
            # the TorchScript exporter announces its own deprecation on every call; tracer warnings about
            # Python-side shape arithmetic are expected (shapes are fixed per input size)
            warnings.simplefilter("ignore")
            torch.onnx.export(_WithProbs(exportable(model)), (example,), str(path), input_names=["input"],
                              output_names=["logits", "probs"], dynamic_axes=dynamic, opset_version=opset,
                              do_constant_folding=True, dynamo=False)
    except (torch.onnx.errors.OnnxExporterError, RuntimeError) as exc:
        raise CnnlabError(f"the ONNX exporter cannot handle this model ({str(exc).splitlines()[0][:160]}); "
                          "a newer `opset` may help, otherwise keep predicting with the torch `engine`") from None
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, dict(props or {}))
    proto.doc_string = INPUT_DOC
    proto.producer_name = "cnnlab (torch.onnx)"
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise CnnlabError(f"the exported graph fails the ONNX checker ({str(exc).splitlines()[0][:160]}); "
                          "try another `opset`") from None
    onnx.save(proto, str(path))


def parity_images(lr, n: int, data_dir: str | None) -> tuple[torch.Tensor, str]:
    """Up to ``n`` uint8 test images of the run, spread evenly over the test set (which may be class-sorted).

    Falls back to random pixels when the run's data cannot be found, saying so in the returned label.
    """

    dcfg = relocate(lr.cfg.data, data_dir)
    try:
        test = load_test_data(dcfg)
    except CnnlabError as exc:
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (n, *lr.input_shape), generator=g, dtype=torch.uint8)
        if not dcfg.dataset:  # an imported model without --dataset: random pixels are all there is to compare
            return x, "random images (the run names no test data)"
        why = str(exc).split("; ")[0].replace("`", "")  # the reason, whole, without advice meant for other commands
        return x, f"random images (test data not found: {why})"
    if tuple(test.shape) != tuple(lr.input_shape):
        raise CnnlabError(f"the test images are {test.shape} but the model takes {lr.input_shape}; "
                          "pass the `data_dir` the run was trained with")
    idx = torch.linspace(0, len(test) - 1, min(n, len(test))).round().long().unique()
    return test.images[idx], "test images"


def max_prob_diff(model: nn.Module, normalizer, onnx_path: Path, images: torch.Tensor, fixed: int | None) -> float:
    """Largest |softmax difference| between PyTorch and onnxruntime over ``images`` (uint8, N C H W)."""
    session = ort_session(onnx_path)
    step = fixed or 64
    worst = 0.0
    for start in range(0, len(images), step):
        x = normalizer(images[start:start + step])
        with torch.inference_mode():
            want = model(x).float().softmax(1).numpy()
        if not np.isfinite(want).all():  # both sides NaN would "agree" (NaN diff): refuse before comparing
            raise CnnlabError("PyTorch's probabilities are not finite (NaN/inf) on the parity images; the model "
                              "cannot be exported meaningfully — check its weights and input normalisation")
        feed = x.numpy()
        if fixed and len(feed) < fixed:  # a fixed-batch graph: pad the last chunk, ignore the padding
            feed = np.concatenate([feed, np.zeros((fixed - len(feed), *feed.shape[1:]), np.float32)])
        got = run_session(session, feed)[:len(want)]
        worst = max(worst, float(np.abs(got - want).max()))
    return worst


def session_info(session, path: str | Path) -> OnnxInfo:
    """The cnnlab metadata of an open session's model."""
    return _info(session.get_modelmeta().custom_metadata_map, path)


def read_metadata(path: str | Path) -> OnnxInfo:
    """The cnnlab metadata of an exported file (see :data:`META`)."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except FileNotFoundError:
        raise CnnlabError(f"{path} not found; export the run to ONNX first (cnnlab export RUN_DIR)") from None
    except Exception as exc:  # protobuf DecodeError and friends
        raise CnnlabError(f"{path} is not an ONNX file ({str(exc)[:120]}); export it again") from None
    return _info({p.key: p.value for p in proto.metadata_props}, path)


def _info(props: dict[str, str], path: str | Path) -> OnnxInfo:
    try:
        return OnnxInfo(
            classes=tuple(json.loads(props[META["classes"]])),
            input_shape=tuple(json.loads(props[META["input_shape"]])),
            mean=tuple(json.loads(props[META["mean"]])),
            std=tuple(json.loads(props[META["std"]])),
            version=props[META["version"]],
            model=props.get(META["model"], ""),
            weights_sha256=props.get(META["weights_sha256"], ""),
            batch=props.get(META["batch"], "dynamic"),
        )
    except (KeyError, ValueError, TypeError):
        raise CnnlabError(f"{path} has no cnnlab metadata (not written by cnnlab export); export the run "
                          "again (cnnlab export RUN_DIR)") from None


def export(run_dir: str | Path, fmt: str = "onnx", **kwargs) -> ExportResult:
    """Dispatches on the export format (only ONNX today); see :func:`export_onnx` for the options."""
    if fmt not in FORMATS:
        raise one_of("export format", fmt, FORMATS)
    return export_onnx(run_dir, **kwargs)
