"""``cnnlab dashboard``: the local web page of a folder of runs (served until Ctrl-C)."""

from __future__ import annotations

import argparse

from cnnlab.cli.main import EXIT_OK
from cnnlab.errors import CnnlabError

try:
    from cnnlab.app.dashboard import serve
except ModuleNotFoundError as exc:  # FastAPI / uvicorn come with the `dashboard` extra
    serve, MISSING = None, exc.name
else:
    MISSING = None


def cmd_dashboard(args: argparse.Namespace) -> int:
    if serve is None:
        raise CnnlabError(f"the dashboard needs FastAPI and uvicorn ({MISSING} is not installed); install them with "
                          "pip install 'cnnlab[dashboard]'")
    serve(args.runs_dir, host=args.host, port=args.port, open_browser=args.open)
    return EXIT_OK
