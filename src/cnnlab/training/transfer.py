"""Transfer learning in training: keep the backbone frozen for some epochs, then unfreeze it (fastai's recipe).

``model.freeze: backbone`` trains only the classifier head (named by the model's metadata);
``model.freeze_epochs: N`` unfreezes the backbone after N epochs, and ``model.backbone_lr`` scales its
learning rate (discriminative rates) against the head's ``train.lr`` through the optimiser's parameter
groups (:func:`cnnlab.training.optim.make_param_groups`).

Frozen means frozen: the BatchNorm layers of a frozen backbone run in inference mode, so their running
statistics do not move either (Keras's rule for a non-trainable BatchNormalization; Lightning fixed the same
bug in its BackboneFinetuning). ``model.train_bn`` (fastai's ``train_bn``) keeps them training instead: their
scale and shift learn and their statistics follow the new data.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from cnnlab.training.callbacks import Callback


def set_backbone_frozen(model: nn.Module, head: set[str], frozen: bool, *, train_bn: bool = False) -> None:
    """Freezes (or unfreezes) every parameter outside ``head``; with ``train_bn`` BatchNorm parameters stay free."""
    bn_params = {f"{n}.{p}" for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                 for p, _ in m.named_parameters(recurse=False)} if train_bn else set()
    for name, p in model.named_parameters():
        p.requires_grad_(not frozen or name in head or name in bn_params)


def backbone_norms(model: nn.Module, head: set[str]) -> list[nn.Module]:
    """The BatchNorm layers outside ``head``."""
    return [m for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and not any(f"{n}.{p}" in head for p, _ in m.named_parameters(recurse=False))]


class BackboneFreeze(Callback):
    """Keeps the backbone frozen for ``epochs`` epochs (0 = the whole run), then unfreezes it.

    Args:
        head: names of the parameters that always train.
        epochs: frozen epochs (0: the whole run).
        log: receives one line when the backbone is unfrozen.
        train_bn: fastai's option: the backbone's BatchNorm layers keep training while it is frozen.
    """

    order = -50  # before anything that looks at the epoch's modes

    def __init__(self, head: set[str], epochs: int, log: Callable[[str], None], *, train_bn: bool = False) -> None:
        self.head, self.epochs, self.log, self.train_bn = head, epochs, log, train_bn
        self._frozen: bool | None = None

    def on_train_epoch_start(self, trainer) -> None:
        frozen = self.epochs == 0 or trainer.epoch < self.epochs
        if frozen != self._frozen:
            set_backbone_frozen(trainer.model, self.head, frozen, train_bn=self.train_bn)
            if self._frozen is not None or not frozen:
                self.log(f"Epoch {trainer.epoch + 1}: backbone {'frozen' if frozen else 'unfrozen'}")
            self._frozen = frozen
        if frozen and not self.train_bn:  # the trainer just put every module in train mode
            for m in backbone_norms(trainer.model, self.head):
                m.eval()
