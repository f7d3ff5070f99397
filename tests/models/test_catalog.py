"""The model catalogue: the registry's names and descriptions, read without importing torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cnnlab.models import catalog as cat
from cnnlab.models import describe, model_names


def test_the_catalogue_is_exactly_what_the_registry_says():
    listed = cat.catalog()
    assert listed == [(name, describe(name)) for name in model_names()]
    assert len(listed) == 28 and ("resnet18", "ResNet-18 (torchvision layout, 11.7M params; any input size).") in listed
    assert ("dnn_128", "Tutorial 1 DNN: Flatten-Dense128-Dense10 (Fashion-MNIST)") in listed


def test_listing_the_catalogue_does_not_import_torch():
    code = ("import sys; from cnnlab.models.catalog import catalog; n = len(catalog()); "
            "print(n, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["28", "False"]


SOURCE = '''
from cnnlab.models import registry
from cnnlab.models.registry import ModelMeta, register_model

META = ModelMeta((3, 224, 224))


@register_model(META)
def plain(**kw):
    """Plain net (the function's name).

    More lines the catalogue leaves out.
    """


@register_model(META, name="by_keyword")
def _builder_a(**kw):
    """  Indented first line.  """


@registry.register_model(ModelMeta((3, 32, 32)), "by_position")
def _builder_b(**kw):
    pass


@register_model(META, name=None)
def none_means_the_function(**kw):
    "One line."


def helper():
    """Not registered."""
'''


def test_registered_in_reads_names_and_docstrings_from_the_source():
    assert cat.registered_in(SOURCE) == [
        ("plain", "Plain net (the function's name).\n\n    More lines the catalogue leaves out.\n    "),
        ("by_keyword", "  Indented first line.  "),
        ("by_position", None),
        ("none_means_the_function", "One line."),
    ]


@pytest.mark.parametrize("source", [
    "from x import register_model\nNAME = 'n'\n@register_model(META, name=NAME)\ndef f(): pass\n",
    "from x import register_model\ndef f(): pass\nf = register_model(META)(f)\n",
    "from x import MODELS\nMODELS.add('n', entry)\n",
    "from x import register_model\n@register_model(META, **options)\ndef f(): pass\n",
    "from x import register_model\n@register_model(*arguments)\ndef f(): pass\n",
    "from x import register_model\nclass A:\n    @register_model(META)\n    def f(self): pass\n",
])
def test_a_registration_the_text_does_not_show_plainly_is_refused(source):
    with pytest.raises(cat.UnreadableSource):
        cat.registered_in(source)


FAMILIES = ("vgg", "resnet", "googlenet", "inception", "mobilenet", "alexnet")


def test_the_classic_families_are_read_from_their_sources(tmp_path, monkeypatch):
    monkeypatch.setattr(cat, "SOURCES", tmp_path)
    for family in FAMILIES:
        (tmp_path / f"{family}.py").write_text("")
    (tmp_path / "alexnet.py").write_text("from x import register_model\n@register_model(M)\ndef tiny():\n    'Tiny.'\n")
    listed = cat.catalog()
    assert ("tiny", "Tiny.") in listed and len(listed) == 12  # + the 11 tutorial models, from their data
    assert listed == sorted(listed)


@pytest.mark.parametrize("vgg", [
    None,  # no source at all (e.g. an install of .pyc files only)
    "from x import MODELS\nMODELS.add('only_known_by_running', entry)\n",
    "from x import register_model\n@register_model(M)\ndef cnn_64x2(): pass\n",  # taken: the registry raises
    "def broken(:\n",
])
def test_a_source_it_cannot_read_sends_the_listing_to_the_registry(vgg, tmp_path, monkeypatch):
    monkeypatch.setattr(cat, "SOURCES", tmp_path)
    for family in FAMILIES:
        (tmp_path / f"{family}.py").write_text("")
    if vgg is None:
        (tmp_path / "vgg.py").unlink()
    else:
        (tmp_path / "vgg.py").write_text(vgg)
    assert cat.catalog() == [(name, describe(name)) for name in model_names()]
