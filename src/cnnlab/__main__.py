"""``python -m cnnlab`` (also what ``torchrun -m cnnlab train ...`` starts on every rank)."""

from cnnlab.cli import entry

if __name__ == "__main__":  # spawned processes import this module again: only the main one runs the CLI
    entry()
