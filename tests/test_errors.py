"""User-facing errors: one class, and the standard "unknown X 'y'; valid: ..." message."""

import pytest

from cnnlab.errors import CnnlabError, one_of


def test_one_of_sorts_the_valid_names():
    err = one_of("engine", "tensorrt", ["torch", "onnx", "auto"])
    assert isinstance(err, CnnlabError)
    assert str(err) == "unknown engine 'tensorrt'; valid: auto, onnx, torch"
    assert str(one_of("view", 3, ())) == "unknown view 3; valid: "


def test_cnnlab_error_is_a_plain_exception():
    assert issubclass(CnnlabError, Exception) and not issubclass(CnnlabError, (ValueError, RuntimeError))
    with pytest.raises(CnnlabError, match="^one line$"):
        raise CnnlabError("one line")
