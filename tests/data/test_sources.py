"""Where dataset files are looked for: the data dir given, then $CNNLAB_DATA, then the cache."""

from cnnlab.data.sources import data_roots


def test_data_root_order(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    assert data_roots(tmp_path / "flag") == [tmp_path / "flag", tmp_path / "env", tmp_path / "cache" / "datasets"]


def test_without_a_data_dir_or_environment_only_the_cache_is_left(tmp_path, monkeypatch):
    monkeypatch.delenv("CNNLAB_DATA", raising=False)
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    assert data_roots() == data_roots("") == [tmp_path / "cache" / "datasets"]
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_roots("~/data")[0] == tmp_path / "home" / "data"  # ~ is expanded
