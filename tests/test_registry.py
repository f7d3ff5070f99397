"""The name → object registry behind models, datasets, optimisers and views."""

import pytest

from cnnlab.errors import CnnlabError
from cnnlab.registry import Registry


def test_register_get_names():
    reg = Registry("widget")

    @reg.register()
    def alpha():
        return 1

    reg.add("beta", lambda: 2)
    assert reg.get("alpha") is alpha
    assert reg.names() == ["alpha", "beta"]
    assert "beta" in reg and "gamma" not in reg
    assert len(reg) == 2


def test_duplicate_name_raises():
    reg = Registry("widget")
    reg.add("a", 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.add("a", 2)


def test_miss_lists_valid_names():
    reg = Registry("widget")
    reg.add("b", 1)
    reg.add("a", 2)
    with pytest.raises(CnnlabError, match=r"unknown widget 'c'; valid: a, b"):
        reg.get("c")


def test_register_under_another_name_and_iterate_sorted():
    reg = Registry("widget")

    @reg.register("zeta")
    def builder():
        return 3

    reg.add("alpha", 1)
    assert reg.get("zeta") is builder and "builder" not in reg
    assert list(reg) == ["alpha", "zeta"]
