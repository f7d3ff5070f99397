"""Re-judge mutants that survived, in one process, against the tests written for them.

``mutmut run NAMES`` starts by running every test that covers the named functions un-mutated, which on a busy
2-vCPU machine takes longer than the mutants themselves (the trainer-level tests). Adding tests cannot un-kill
a mutant, so after writing tests for survivors only the survivors need judging, and only against the new tests.
This does what mutmut's workers do (import the code from ``mutants/src``, whose trampolines call the mutant
named by ``MUTANT_UNDER_TEST``, run pytest with ``-x``; a failure kills the mutant) for each survivor of the last
``mutmut run`` matching ``--only``, and prints killed/survived per mutant. It does not write mutmut's results.

Usage: PYTHONPATH=mutants/src python scripts/mutation_recheck.py --only 'cnnlab.data.tensors*' TEST_ID...
"""

from __future__ import annotations

import argparse
import fnmatch
import io
import os
import sys
from contextlib import redirect_stderr, redirect_stdout

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from mutation_report import results  # noqa: E402 - the script's own folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", required=True, help="glob of mutant names, e.g. 'cnnlab.data.tensors*'")
    ap.add_argument("tests", nargs="+", help="pytest node ids or files to judge them with")
    args = ap.parse_args()
    if "mutants" not in (sys.modules.get("cnnlab") or __import__("cnnlab")).__file__:
        sys.exit("run with PYTHONPATH=mutants/src so that the mutated code is imported")
    names = sorted(n for n, s in results().items()
                   if s in ("survived", "no tests", "suspicious") and fnmatch.fnmatch(n, args.only))
    killed = 0
    for name in names:
        os.environ["MUTANT_UNDER_TEST"] = name
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            code = pytest.main(["-x", "-q", "-p", "no:cacheprovider", *args.tests])
        verdict = "killed" if code == pytest.ExitCode.TESTS_FAILED else "survived" if code == 0 else f"error {code}"
        killed += verdict == "killed"
        print(f"{verdict}: {name}", flush=True)
    print(f"{killed} of {len(names)} killed")


if __name__ == "__main__":
    main()
