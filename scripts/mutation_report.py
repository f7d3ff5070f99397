"""Mutation score per module from the last `mutmut run` (`make mutate`), as the table docs/testing.md keeps.

A mutant is *killed* when a test fails on it (a timeout counts: the tests noticed the change), *survived* when
every test passed, and *untested* when no selected test runs its function (it counts against the score like a
survivor: nothing would notice it). Mutants judged equivalent (they
cannot change any result) are listed in docs/testing.md with the reason, by name, in a fenced block headed
``equivalent``; they are left out of the score.

Usage: python scripts/mutation_report.py [--survivors] [--docs docs/testing.md]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

KILLED = {"killed", "timeout"}


def results() -> dict[str, str]:
    """{mutant name: status} of every mutant of the last run."""
    out = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], capture_output=True,
                         text=True, check=True).stdout
    return dict(re.findall(r"^\s*(\S+__mutmut_\d+): (\S.*?)\s*$", out, flags=re.M))


def equivalent(docs: Path) -> set[str]:
    """Mutant names listed under an ```equivalent fenced block of ``docs``."""
    if not docs.is_file():
        return set()
    blocks = re.findall(r"```equivalent\n(.*?)```", docs.read_text(), flags=re.S)
    return {line.split()[0] for block in blocks for line in block.splitlines() if line.strip()}


def module_of(mutant: str) -> str:
    """``cnnlab.training.optim`` for ``cnnlab.training.optim.x_lr_factor__mutmut_14`` and for a method's
    ``cnnlab.training.callbacks.xǁNanGuardǁon_train_batch_end__mutmut_1``."""
    return mutant.split(".xǁ")[0] if ".xǁ" in mutant else mutant.rsplit(".", 1)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=Path, default=Path("docs/testing.md"))
    ap.add_argument("--survivors", action="store_true", help="also list every surviving mutant")
    args = ap.parse_args()
    status = results()
    same = equivalent(args.docs)
    table: dict[str, Counter] = defaultdict(Counter)
    for name, state in status.items():
        kind = "equivalent" if name in same else "killed" if state in KILLED else state
        table[module_of(name)][kind] += 1
    print("| module | mutants | killed | survived | equivalent | untested | not run | score |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for module in sorted(table):
        c = table[module]
        counted = c["killed"] + c["survived"] + c["no tests"]
        score = f"{100 * c['killed'] / counted:.1f}%" if counted else "n/a"
        print(f"| {module} | {sum(c.values())} | {c['killed']} | {c['survived']} | {c['equivalent']} | "
              f"{c['no tests']} | {c['not checked']} | {score} |")
    if args.survivors:
        print("\nsurvived:")
        for name, state in sorted(status.items()):
            if state == "survived" and name not in same:
                print(f"  {name}")


if __name__ == "__main__":
    main()
