"""Applications built on runs, views and serving: the HTML report, compare, the public Python API."""
