"""Transfer learning in training: keep the backbone frozen for some epochs, then unfreeze it (fastai's recipe).

``model.freeze: backbone`` trains only the classifier head (named by the model's metadata);
``model.freeze_epochs: N`` unfreezes the backbone after N epochs, and ``model.backbone_lr`` scales its
learning rate (discriminative rates) against the head's ``train.lr`` through the optimiser's parameter
groups (:func:`cnnlab.training.optim.param_groups`).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from cnnlab.training.callbacks import Callback


def set_backbone_frozen(model: nn.Module, head: set[str], frozen: bool) -> None:
    """Freezes (or unfreezes) every parameter outside ``head``."""
    for name, p in model.named_parameters():
        p.requires_grad_(not frozen or name in head)


class BackboneFreeze(Callback):
    """Keeps the backbone frozen for ``epochs`` epochs (0 = the whole run), then unfreezes it."""

    def __init__(self, head: set[str], epochs: int, log: Callable[[str], None]) -> None:
        self.head, self.epochs, self.log = head, epochs, log
        self._frozen: bool | None = None

    def on_train_epoch_start(self, trainer) -> None:
        frozen = self.epochs == 0 or trainer.epoch < self.epochs
        if frozen != self._frozen:
            set_backbone_frozen(trainer.model, self.head, frozen)
            if self._frozen is not None or not frozen:
                self.log(f"Epoch {trainer.epoch + 1}: backbone {'frozen' if frozen else 'unfrozen'}")
            self._frozen = frozen
