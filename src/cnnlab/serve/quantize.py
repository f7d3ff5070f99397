"""int8 ONNX: static quantisation of an exported fp32 graph, refused when it costs too much accuracy.

ONNX Runtime's post-training static quantisation (``onnxruntime.quantization.quantize_static``) in QDQ
format: QuantizeLinear/DequantizeLinear pairs around each Conv/Gemm/MatMul/pool, which ONNX Runtime's
graph optimiser fuses into integer kernels (VNNI ``vpdpbusd`` on CPUs that have it). Weights are
quantised per output channel (int8, symmetric), activations per tensor (uint8, asymmetric), with
ranges from a MinMax calibration over a few hundred training images (Jacob et al. 2018, "Quantization and
Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference", the scheme ORT implements).
The final Softmax stays in float so ``probs`` keeps full resolution.

The check that follows compares the test-set accuracy of the fp32 and int8 graphs on the same images.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnlab.data.prepare import load_test_data, load_train_data, relocate
from cnnlab.data.tensors import ImageData, Normalizer
from cnnlab.errors import CnnlabError
from cnnlab.serve.engines import OrtEngine, ort_session

QUANTIZE = ("int8",)
CALIBRATION_IMAGES = 300
DEFAULT_MAX_DROP = 0.5  # test-accuracy points (percent) int8 may lose against fp32
INT8_META = "cnnlab.quantized"  # metadata_props key of a quantised file; value "int8"

Log = Callable[[str], None]


def int8_path(path: str | Path) -> Path:
    """Where the int8 file of an fp32 export goes: ``model.onnx`` → ``model.int8.onnx``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.int8{path.suffix or '.onnx'}")


@dataclass
class QuantResult:
    """A quantised file and the test accuracy (fractions) of both graphs on the same ``images``."""

    path: Path
    fp32_acc: float
    int8_acc: float
    images: int
    calibration: int
    max_drop: float

    @property
    def drop(self) -> float:
        """Accuracy points (percent) lost by int8; negative when it gained."""
        return 100 * (self.fp32_acc - self.int8_acc)

    @property
    def line(self) -> str:
        return (f"int8: test accuracy fp32 {self.fp32_acc:.2%} | int8 {self.int8_acc:.2%} over {self.images:,} "
                f"test images (drop {self.drop:.2f} points, limit {self.max_drop:g}; calibrated on "
                f"{self.calibration} training images)")


class _Reader:
    """The calibration images as onnxruntime's ``CalibrationDataReader`` protocol: feeds of 32 images."""

    def __init__(self, x: np.ndarray) -> None:
        self._chunks = iter([{"input": x[i:i + 32]} for i in range(0, len(x), 32)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._chunks, None)


def calibration_batch(train: ImageData, normalizer: Normalizer, n: int = CALIBRATION_IMAGES) -> np.ndarray:
    """float32 (n, C, H, W): ``n`` training images (a fixed random draw, seed 0), normalised as for the model."""
    import torch

    idx = np.sort(np.random.default_rng(0).permutation(len(train))[:n])
    return normalizer(train.images[torch.from_numpy(idx)]).float().numpy()


def quantize_int8(fp32_path: str | Path, out: str | Path, calibration: np.ndarray,
                  props: dict[str, str]) -> None:
    """Writes the QDQ int8 version of the fp32 graph ``fp32_path`` to ``out``, with ``props`` as metadata.

    Args:
        fp32_path: an fp32 graph written by :func:`cnnlab.serve.onnx.write_onnx`.
        out: the int8 file to write.
        calibration: float32 (N, C, H, W) normalised inputs whose activation ranges fix the scales.
        props: metadata_props for the int8 file (the fp32 file's, plus ``cnnlab.quantized``).

    Raises:
        CnnlabError: a fixed-batch graph (calibration feeds 32 images at a time), or quantisation failed.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    proto = onnx.load(str(fp32_path))
    if proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "":
        raise CnnlabError("int8 quantisation needs a dynamic batch; drop `batch` (keep it dynamic)")
    softmax = [n.name for n in proto.graph.node if n.op_type == "Softmax"]
    with tempfile.TemporaryDirectory(prefix="cnnlab-int8-") as scratch:
        pre = Path(scratch) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)  # shapes + folding, as ORT advises
        quantize_static(str(pre), str(out), _Reader(calibration), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=softmax,
                        extra_options={"CalibTensorRangeSymmetric": False})
    proto = onnx.load(str(out))
    onnx.helper.set_model_props(proto, {**props, INT8_META: "int8"})
    proto.producer_name = "cnnlab (torch.onnx + onnxruntime.quantization)"
    onnx.save(proto, str(out))


def accuracy(path: str | Path, normalizer: Normalizer, test: ImageData, batch: int = 1000) -> float:
    """Fraction of ``test`` an ONNX graph classifies right (uint8 in, argmax of ``probs``)."""
    engine = OrtEngine(ort_session(path), normalizer, test.shape[0])
    images = test.images
    right = 0
    for i in range(0, len(test), batch):
        x = np.ascontiguousarray(np.asarray(images[i:i + batch]))
        right += int((engine(x).argmax(1) == test.labels[i:i + batch].numpy()).sum())
    return right / len(test)


def check_int8(fp32_path: Path, int8_file: Path, final: Path, normalizer: Normalizer, test: ImageData,
               calibration: int, max_drop: float) -> QuantResult:
    """Both graphs' test accuracy; raises when int8 loses more than ``max_drop`` points.

    Raises:
        CnnlabError: int8 is more than ``max_drop`` points below fp32 (the caller writes nothing then).
    """
    result = QuantResult(final, accuracy(fp32_path, normalizer, test), accuracy(int8_file, normalizer, test),
                         len(test), calibration, max_drop)
    if not result.drop <= max_drop:
        raise CnnlabError(f"{result.line}: int8 loses more than `max_drop`; nothing was written (raise `max_drop` "
                          "to accept it, or keep the fp32 export)")
    return result


def quantize_run(lr, fp32: Path, tmp: Path, final: Path, props: dict[str, str], data_dir: str | None,
                 max_drop: float) -> QuantResult:
    """Calibrates on a run's training images, writes the int8 graph to ``tmp``, checks it on the whole test set.

    Args:
        lr: the loaded run (:class:`cnnlab.runs.loaded.LoadedRun`).
        fp32: its fp32 graph.
        tmp: where to write the int8 graph (the caller renames it to ``final`` on success).
        final: the int8 file's name, for the result.
        props: the fp32 file's metadata_props.
        data_dir: where the run's dataset lives, if not where it was trained from.
        max_drop: see :func:`check_int8`.

    Raises:
        CnnlabError: the data cannot be found, or as :func:`quantize_int8` and :func:`check_int8`.
    """
    dcfg = relocate(lr.cfg.data, data_dir)
    calib = calibration_batch(load_train_data(dcfg), lr.normalizer)
    quantize_int8(fp32, tmp, calib, props)
    return check_int8(fp32, tmp, final, lr.normalizer, load_test_data(dcfg), len(calib), max_drop)
