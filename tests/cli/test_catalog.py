"""``cnnlab datasets``, ``models`` and ``summary``: what they print, and user mistakes as one ``error:`` line."""

import json
import subprocess
import sys

import pytest

from cnnlab.cli import main
from cnnlab.cli.catalog import parse_input_shape
from cnnlab.errors import CnnlabError


def test_summary_prints_keras_total(capsys):
    assert main(["summary", "cnn_64x2"]) == 0
    out = capsys.readouterr().out
    assert "Total params: 243,786" in out and "(None, 26, 26, 64)" in out
    assert main(["summary", "cnn_32x1", "--input-shape", "28,28,1"]) == 0
    assert "Total params: 693,962" in capsys.readouterr().out


def test_summary_of_a_yaml_layer_list(tmp_path, capsys):
    f = tmp_path / "m.yaml"
    f.write_text("- {type: Conv2D, filters: 16, kernel_size: 3, activation: relu}\n- {type: Flatten}\n"
                 "- {type: Dense, units: 10}\n")
    assert main(["summary", str(f), "--input-shape", "28,28,1"]) == 0
    assert f"Total params: {16 * 10 + 26 * 26 * 16 * 10 + 10:,}" in capsys.readouterr().out


def test_summary_options(capsys):
    assert main(["summary", "resnet18", "--input-shape", "32x32x3", "--num-classes", "5"]) == 0
    out = capsys.readouterr().out
    assert "(None, 5)" in out and "Trainable params: 11,179,077" in out  # 512 * 5 + 5 in the head
    # + BatchNorm's moving mean and variance (2 x 4,800 values), non-trainable parameters as Keras counts them
    assert "Total params: 11,188,677" in out and "Non-trainable params: 9,600" in out


def test_datasets_and_models_lists(capsys):
    assert main(["datasets", "list"]) == 0
    out = capsys.readouterr().out
    assert "fashion-mnist-sample" in out and "cifar-10" in out
    assert main(["datasets", "info", "mnist"]) == 0
    out = capsys.readouterr().out
    assert "f68b3c2dcbeaaa9fbdd348bbdeb94873" in out or "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609" in out
    assert main(["models"]) == 0
    assert "cnn_64x2" in capsys.readouterr().out


def test_dataset_info_lines(capsys):
    assert main(["datasets", "info", "fashion-mnist-sample"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("fashion-mnist-sample: ")
    assert lines[1] == "  images: 28x28x1 uint8, 6,000 train / 1,000 test"
    assert lines[2].startswith("  classes (10): T-shirt/top, Trouser,") and lines[4].endswith(" (bundled)")
    assert lines[3].startswith("  homepage: https://") and lines[5] == "  files:"
    assert main(["datasets", "info", "cifar-10"]) == 0
    out = capsys.readouterr().out
    assert "  images: 32x32x3 uint8, 50,000 train / 10,000 test" in out
    assert "(downloaded as cifar-10-python.tar.gz, md5 c58f30108f718f92721af3b95e74349a, from https://" in out
    assert main(["models"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "Any Keras-style layer list works too: model.layers in a YAML config (see configs/)."
    assert any(line.startswith("dnn_128              Tutorial 1 DNN:") for line in out)


def test_models_prints_the_catalogue_and_the_lists_start_without_torch(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    from cnnlab.models import describe, model_names

    assert lines[:-2] == [f"{name:<20} {describe(name)}" for name in model_names()] and lines[-2] == ""
    # start-up: these commands only read tables, so they must not pay for importing PyTorch (~1.1 s)
    code = ("import sys; from cnnlab.cli import main; "
            "codes = [main(a) for a in (['models'], ['datasets', 'list'], ['datasets', 'info', 'cifar-10'])]; "
            "print(codes, 'torch' in sys.modules, file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stderr.strip() == "[0, 0, 0] False"


def test_summary_of_a_layer_list_model_starts_without_torch():
    # start-up: a layer list's table follows from the list, so `cnnlab summary` must not pay for PyTorch (~1.2 s)
    code = ("import sys; from cnnlab.cli import main; "
            "codes = [main(a) for a in (['summary', 'cnn_64x2'], ['summary', 'fast/mnist', '--input-shape', '32,32,1'])]; "
            "print(codes, 'torch' in sys.modules, file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stderr.strip() == "[0, 0] False"
    assert "Total params: 243,786" in done.stdout


def test_datasets_inspect_a_folder(image_folder, capsys):
    assert main(["datasets", "inspect", str(image_folder)]) == 0
    out = capsys.readouterr().out
    assert "120 readable images, 3 classes" in out and "trouser" in out
    assert main(["datasets", "inspect", str(image_folder), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["tshirt"] == 40


@pytest.mark.parametrize("argv, message", [
    (["summary", "cnn_64x2", "--input-shape", "28x28"], "expected H,W,C"),
    (["datasets", "info", "mnits"], "unknown dataset 'mnits'"),
])
def test_user_mistakes_are_one_line_errors(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_input_shapes_are_keras_order():
    assert parse_input_shape("28,28,1") == (1, 28, 28) and parse_input_shape("50x40x3") == (3, 50, 40)
    with pytest.raises(CnnlabError, match="--input-shape '28,0,1': sizes must be positive"):
        parse_input_shape("28,0,1")
    with pytest.raises(CnnlabError, match="--input-shape 'big': expected H,W,C like 28,28,1 or 224,224,3"):
        parse_input_shape("big")


def test_summary_of_the_cats_dogs_config_takes_its_classes_from_the_data(tmp_path, monkeypatch, capsys):
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    assert main(["summary", "cats_dogs_vgg16"]) == 2  # the Kaggle files are not here
    err = capsys.readouterr().err
    assert err.startswith("error: the config's classes come from its image folder data/cats-vs-dogs/train, which "
                          "does not exist here") and err.rstrip().endswith("give --num-classes to summarise without it")
    assert main(["summary", "cats_dogs_vgg16", "--num-classes", "2"]) == 0
    assert "Total params: 33,605,442" in capsys.readouterr().out  # Keras's VGG-16 at 50x50x3, 2 classes
    folder = tmp_path / "data" / "cats-vs-dogs" / "train"
    folder.mkdir(parents=True)
    for name in ("cat.1.jpg", "dog.1.jpg"):
        Image.new("RGB", (60, 40)).save(folder / name)
    assert main(["summary", "cats_dogs_vgg16"]) == 0
    assert "Total params: 33,605,442" in capsys.readouterr().out
