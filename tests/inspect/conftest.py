"""Fixtures of the inspect tests.

The tiny models and helpers these tests use (``keras_cnn_maps``, ``nested_cnn_maps``, ``dense_net_maps``,
``images_maps``, ``png_check_maps``, the trained ``patch_net`` and ``keras_net``) are shared with
tests/models (summary rows) and tests/plots (the figures drawn from the same arrays), so they live one
level up, in tests/conftest.py. Fixtures only the inspect tests need go here.
"""
