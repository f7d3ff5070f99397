from __future__ import annotations

import platform
import sys

import pytest

from cnnlab.native import heap

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_the_thresholds_are_set_once_and_can_be_left_alone(monkeypatch):
    monkeypatch.setattr(heap, "_done", None)
    monkeypatch.setenv("CNNLAB_KEEP_HEAP", "0")
    assert heap.keep_freed_memory() is False
    monkeypatch.setattr(heap, "_done", None)
    monkeypatch.delenv("CNNLAB_KEEP_HEAP")
    assert heap.keep_freed_memory() is True
