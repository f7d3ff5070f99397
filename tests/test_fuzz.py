"""Fuzzing every decoder of untrusted bytes (Hypothesis): images, IDX, CIFAR batches, safetensors, configs.

The only outcomes allowed are a valid result or a :class:`~cnnlab.errors.CnnlabError`: any other exception
(a crash), a hang or a huge allocation fails the test. Random bytes rarely get past a format's first check,
so each target also mutates a valid file (flipped, inserted and cut bytes) and, for safetensors, writes
well-formed headers with random dtypes, shapes and offsets. The default run tries ``QUICK`` examples per
target (fixed seed); the ``slow`` run ``LONG`` (random seed; docs/reliability.md counts them).
"""

from __future__ import annotations

import gzip
import io
import json
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cnnlab.config import Config, load_config
from cnnlab.data import cifar
from cnnlab.data.decode import decode_image
from cnnlab.data.idx import read_idx
from cnnlab.errors import CnnlabError
from cnnlab.models.weights import load_state_dict_file

QUICK, LONG = 50, 2000


def _mutated(seed: bytes) -> st.SearchStrategy[bytes]:
    """``seed`` with a few bytes flipped, inserted or removed, and possibly cut short."""

    @st.composite
    def build(draw):
        data = bytearray(seed)
        for _ in range(draw(st.integers(1, 8))):
            pos = draw(st.integers(0, max(len(data) - 1, 0)))
            op = draw(st.sampled_from(("flip", "insert", "delete", "byte")))
            if op == "flip" and data:
                data[pos] ^= 1 << draw(st.integers(0, 7))
            elif op == "insert":
                data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
            elif op == "delete" and data:
                del data[pos:pos + draw(st.integers(1, 16))]
            elif data:
                data[pos] = draw(st.integers(0, 255))
        if draw(st.booleans()):
            data = data[: draw(st.integers(0, len(data)))]
        return bytes(data)

    return build()


def _bytes_like(*seeds: bytes) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=512), *(_mutated(s) for s in seeds))


# ----------------------------------------------------------------------------------------- the targets


def _image_seeds() -> list[bytes]:
    out = []
    pixels = Image.fromarray(np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3))
    for fmt in ("PNG", "JPEG", "GIF", "BMP", "WEBP"):
        buf = io.BytesIO()
        pixels.save(buf, fmt)
        out.append(buf.getvalue())
    return out


def _image(data: bytes, folder: Path) -> None:
    path = folder / "x.png"
    path.write_bytes(data)
    try:
        out = decode_image(path, size=(8, 8))
    except CnnlabError:
        return
    assert out.dtype == torch.uint8 and out.shape == (3, 8, 8)


def _idx_seed() -> bytes:
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    return bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in arr.shape) + arr.tobytes()


def _idx(data: bytes, folder: Path) -> None:
    for name, body in (("x", data), ("x.gz", gzip.compress(data, mtime=0))):
        (folder / name).write_bytes(body)
        try:
            out = read_idx(folder / name)
        except CnnlabError:
            continue
        assert isinstance(out, np.ndarray) and out.nbytes <= len(data)


def _cifar_seed() -> bytes:
    data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    return pickle.dumps({b"data": data, b"labels": [3, 7], b"batch_label": b"x"}, protocol=2)


def _cifar(data: bytes, folder: Path) -> None:
    (folder / "data_batch_1").write_bytes(data)
    try:
        x, y = cifar.read_split(folder, ("data_batch_1",))
    except CnnlabError:
        return
    assert x.dtype == np.uint8 and x.shape[1:] == (3, 32, 32) and y.shape == (x.shape[0],)


def _safetensors_seed() -> bytes:
    from safetensors.torch import save

    return save({"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.zeros(2)})


@st.composite
def _safetensors_headers(draw) -> bytes:
    """Well-formed JSON headers whose dtypes, shapes and offsets may lie."""
    body = draw(st.binary(max_size=64))
    tensors = {}
    for name in draw(st.lists(st.sampled_from(["w", "b", "c", "__metadata__"]), max_size=3, unique=True)):
        begin = draw(st.integers(0, 80))
        tensors[name] = {"dtype": draw(st.sampled_from(["F32", "F16", "I64", "U8", "BOOL", "F64", "X9", ""])),
                         "shape": draw(st.lists(st.integers(0, 2**40), max_size=3)),
                         "data_offsets": [begin, begin + draw(st.integers(-4, 80))]}
    text = json.dumps(tensors).encode()
    length = len(text) + draw(st.sampled_from([0, 0, 0, 1, -1, 2**40]))
    return struct.pack("<Q", max(length, 0)) + text + body


def _safetensors(data: bytes, folder: Path) -> None:
    path = folder / "w.safetensors"
    path.write_bytes(data)
    try:
        out = load_state_dict_file(path)
    except CnnlabError:
        return
    assert all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in out.items())


def _config_seed() -> bytes:
    from cnnlab.config import config_path

    return config_path("fashion_mnist_cnn").read_bytes()


def _config(data: bytes, folder: Path) -> None:
    path = folder / "c.yaml"
    path.write_bytes(data)
    try:
        cfg = load_config(path)
    except CnnlabError:
        return
    assert isinstance(cfg, Config)


TARGETS = {
    "image": (_image, lambda: _bytes_like(*_image_seeds())),
    "idx": (_idx, lambda: _bytes_like(_idx_seed())),
    "cifar": (_cifar, lambda: _bytes_like(_cifar_seed())),
    "safetensors": (_safetensors, lambda: st.one_of(_bytes_like(_safetensors_seed()), _safetensors_headers())),
    "config": (_config, lambda: st.one_of(_bytes_like(_config_seed()), st.text(max_size=300).map(str.encode))),
}


def _fuzz(name: str, examples: int, folder: Path, *, derandomize: bool) -> None:
    target, strategy = TARGETS[name]

    @settings(max_examples=examples, deadline=None, database=None, derandomize=derandomize,
              suppress_health_check=list(HealthCheck))
    @given(strategy())
    def run(data: bytes) -> None:
        target(data, folder)

    run()


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_random_bytes_give_a_result_or_a_cnnlab_error(name, tmp_path):
    _fuzz(name, QUICK, tmp_path, derandomize=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TARGETS))
def test_random_bytes_give_a_result_or_a_cnnlab_error_long(name, tmp_path):
    # in a child process: a decoder that kills the interpreter (numpy's dtype state once segfaulted on a mutated
    # CIFAR batch) fails this test with its last input kept, instead of ending the whole suite
    done = subprocess.run([sys.executable, "-X", "faulthandler", __file__, name, str(tmp_path)],
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, (f"fuzzing {name} ended with exit code {done.returncode}; its last input is "
                                  f"in {tmp_path}\n{done.stderr[-4000:]}")
    # ~270 MB is the interpreter with torch; a decoder that lets a small file claim GBs shows here (the C
    # unpickler's memo once took 3 GB in one run of this test, and an out-of-memory kill in another)
    peak_mb = int(done.stdout.split()[-1])
    assert peak_mb < MAX_PEAK_MB, f"fuzzing {name} peaked at {peak_mb} MB; its last input is in {tmp_path}"


MAX_PEAK_MB = 1024

def _peak_mb() -> int:
    """This process's peak resident memory in MB: VmHWM, which belongs to the address space the exec made
    (getrusage's ru_maxrss keeps the forking parent's peak across exec: a 1.5 GB pytest reads as this child's)."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) // 1024


if __name__ == "__main__":  # the slow test's child: python tests/test_fuzz.py TARGET FOLDER; prints its peak MB
    _fuzz(sys.argv[1], LONG, Path(sys.argv[2]), derandomize=False)
    print(_peak_mb())
