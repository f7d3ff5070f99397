"""The Keras-style output: epoch lines, the live bar on a terminal or in Jupyter."""

import io
import sys
from types import SimpleNamespace

import torch

from cnnlab.training.progressbar import ProgressBar, _interactive, format_epoch


def _trainer(epoch=0, epochs=5, steps_per_epoch=10):
    """What ProgressBar reads of a :class:`~cnnlab.training.trainer.Trainer`."""
    return SimpleNamespace(epoch=epoch, epochs=epochs, steps_per_epoch=steps_per_epoch)


def test_epoch_lines_are_keras_style():
    m = {"seconds": 4.12, "train_loss": 0.25571, "train_acc": 0.90521, "val_loss": 0.26394, "val_acc": 0.90467}
    assert format_epoch(3, 5, m) == ("Epoch 3/5 - 4.1s - loss 0.2557 - acc 0.9052 - val_loss 0.2639 - "
                                     "val_acc 0.9047")
    assert format_epoch(1, 1, {**m, "val_loss": None}) == "Epoch 1/1 - 4.1s - loss 0.2557 - acc 0.9052"


def test_progress_bar_without_a_terminal_prints_one_line_per_epoch(toy, make_trainer):
    out = io.StringIO()
    bar = ProgressBar(out)
    assert not bar.live  # a StringIO is no terminal
    make_trainer(toy, callbacks=[bar], epochs=2).fit()
    lines = out.getvalue().splitlines()
    assert [line.split(" - ")[0] for line in lines] == ["Epoch 1/2", "Epoch 2/2"]
    assert all(" - loss " in line and " - val_acc " in line for line in lines)


class _Stream(io.StringIO):
    """A text stream that says whether it is a terminal and counts flushes."""

    def __init__(self, tty=False):
        super().__init__()
        self.tty, self.flushes = tty, 0

    def isatty(self):
        return self.tty

    def flush(self):
        self.flushes += 1


def test_progress_bar_goes_live_on_a_terminal_unless_told_and_flushes_each_line():
    assert ProgressBar(_Stream(tty=True)).live and not ProgressBar(_Stream()).live
    assert ProgressBar(_Stream(), live=True).live is True and ProgressBar(_Stream(tty=True), live=False).live is False
    out = _Stream()
    bar = ProgressBar(out, live=False)
    before = out.flushes
    bar.on_train_epoch_end(_trainer(epoch=1, epochs=2), {"seconds": 1.0, "train_loss": 0.5, "train_acc": 0.8})
    assert out.getvalue() == "Epoch 1/2 - 1.0s - loss 0.5000 - acc 0.8000\n" and out.flushes > before


def test_live_progress_bar_shows_epoch_count_and_loss_and_redraws_at_most_5_times_a_second(monkeypatch):
    from cnnlab.training import progressbar

    out = _Stream()
    bar = ProgressBar(out, live=True)
    t = _trainer(epoch=2, epochs=5, steps_per_epoch=4)
    bar.on_train_epoch_start(t)
    progress = bar._bar
    assert [type(c).__name__ for c in progress.columns] == [
        "TextColumn", "BarColumn", "MofNCompleteColumn", "TimeRemainingColumn", "TextColumn"]
    assert (progress.columns[0].text_format, progress.columns[4].text_format) == ("Epoch 3/5", "{task.fields[loss]}")
    assert progress.console.file is out and progress.live.transient
    (task,) = progress.tasks
    assert (task.description, task.total, task.completed, task.fields) == ("train", 4, 0, {"loss": ""})
    completed = []
    for batch, now in enumerate([0.5, 0.6, 0.9, 0.9]):  # redraw when > 0.2 s passed, and at the last step
        monkeypatch.setattr(progressbar.time, "monotonic", lambda now=now: now)
        bar.on_train_batch_end(t, batch, torch.tensor(0.123456 + batch))
        completed.append((task.completed, task.fields["loss"]))
    assert completed == [(1, "loss 0.1235"), (1, "loss 0.1235"), (3, "loss 2.1235"), (4, "loss 3.1235")]
    bar.on_train_epoch_end(t, {"seconds": 1.0, "train_loss": 0.5, "train_acc": 0.8})
    assert bar._bar is None and not progress.live.is_started
    bar.on_train_batch_end(t, 0, torch.tensor(0.0))  # no bar between epochs: nothing to draw
    bar.on_fit_end(t)
    assert bar._bar is None


def test_interactive_means_a_terminal_or_a_jupyter_kernels_stdout(monkeypatch):

    class ZMQInteractiveShell:  # Jupyter's kernel shell, by the class name IPython gives it
        pass

    class TerminalInteractiveShell:
        pass

    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    assert _interactive(_Stream(tty=True)) and not _interactive(_Stream()) and not _interactive(object())
    assert not _interactive(sys.stdout) or sys.stdout.isatty()
    from types import SimpleNamespace

    monkeypatch.setattr(sys, "stdout", _Stream())
    for shell, expected in ((ZMQInteractiveShell(), True), (TerminalInteractiveShell(), False), (None, False)):
        monkeypatch.setitem(sys.modules, "IPython", SimpleNamespace(get_ipython=lambda shell=shell: shell))
        assert _interactive(sys.stdout) is expected, shell
        assert _interactive(_Stream()) is False  # a kernel renders widgets on its own stdout only
    monkeypatch.setitem(sys.modules, "IPython", SimpleNamespace())  # an IPython without get_ipython
    assert _interactive(sys.stdout) is False


