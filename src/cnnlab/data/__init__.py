"""Datasets: sources (download + verify + cache), readers, in-memory tensors, augmentation."""
