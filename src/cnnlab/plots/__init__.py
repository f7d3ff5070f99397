"""Figures drawn from computed arrays: shared helpers, results, maps and attribution plots."""
