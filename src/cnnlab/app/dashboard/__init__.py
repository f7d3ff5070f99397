"""``cnnlab dashboard``: a local web page to watch, compare and see inside the runs under a folder.

:func:`serve` serves it until Ctrl-C; :func:`create_app` is the ASGI application (FastAPI) for tests or
another server. It reads runs through :mod:`cnnlab.runs`, computes through :mod:`cnnlab.views` and
:mod:`cnnlab.inspect`, predicts through :mod:`cnnlab.serve`, and writes nothing but each run's
``.cache/dashboard/``.
"""

from cnnlab.app.dashboard.server import create_app, serve

__all__ = ["create_app", "serve"]
