"""Where dataset files are looked for: the data dir given, then $CNNLAB_DATA, then the cache."""

import pytest

from cnnlab.data.sources import data_roots


def test_data_root_order(tmp_path, monkeypatch):
    (tmp_path / "flag").mkdir()
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    assert data_roots(tmp_path / "flag") == [tmp_path / "flag", tmp_path / "env", tmp_path / "cache" / "datasets"]


def test_without_a_data_dir_or_environment_only_the_cache_is_left(tmp_path, monkeypatch):
    monkeypatch.delenv("CNNLAB_DATA", raising=False)
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    assert data_roots() == data_roots("") == [tmp_path / "cache" / "datasets"]
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home" / "data").mkdir(parents=True)
    assert data_roots("~/data")[0] == tmp_path / "home" / "data"  # ~ is expanded


def test_a_data_dir_that_does_not_exist_is_an_error_not_a_fallback(tmp_path):
    from cnnlab.errors import CnnlabError

    with pytest.raises(CnnlabError, match="`data_dir` .*2024 is not a folder"):
        data_roots(tmp_path / "2024")
