"""Transfer learning: start from pretrained or local weights, freeze the backbone, fine-tune it later.

fastai's ``fine_tune`` recipe in config form: ``model.freeze: backbone`` trains only the new head;
``model.freeze_epochs: N`` unfreezes the backbone after N epochs, and ``model.backbone_lr`` scales its
learning rate (discriminative rates) against the head's ``train.lr``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from cnnlab.config import ModelConfig
from cnnlab.errors import CnnlabError
from cnnlab.train.callbacks import Callback


@dataclass
class Transfer:
    """Which parameters form the head (new, always trained) and what loading did."""

    head: set[str] = field(default_factory=set)
    report: object | None = None


def load_initial_weights(model: nn.Module, cfg: ModelConfig, log: Callable[[str], None]) -> object | None:
    """Loads the official (``pretrained``) or a local (``weights``) file into ``model``.

    Registered deep CNNs adapt the file (new head for another class count, grey first conv); other
    models need a state dict of exactly their architecture (e.g. another run's model.safetensors).
    """
    if not (cfg.pretrained or cfg.weights):
        return None
    arch = getattr(model, "cnnlab_arch", None)
    if arch is None:
        if cfg.pretrained:
            from cnnlab.models.pretrained import PRETRAINED

            raise CnnlabError(f"model {cfg.name or 'from layers'} has no published pretrained weights; "
                              f"pretrained works with {', '.join(sorted(PRETRAINED))} — or pass model.weights FILE")
        from cnnlab.models.pretrained import load_state_dict_file
        from cnnlab.train.checkpoint import load_into

        load_into(model, load_state_dict_file(cfg.weights), cfg.weights)
        log(f"Weights: loaded {cfg.weights}")
        return None
    from cnnlab.models.pretrained import apply_pretrained

    report = apply_pretrained(model, arch=arch, weights=cfg.weights)
    log(f"Weights: {report}")
    return report


def prepare_transfer(model: nn.Module, cfg: ModelConfig, log: Callable[[str], None]) -> Transfer:
    """Loads initial weights and works out the head's parameter names for freezing / rates."""
    report = load_initial_weights(model, cfg, log)
    if not cfg.freeze and cfg.backbone_lr == 1.0:
        return Transfer(set(), report)
    head = getattr(model, "cnnlab_head", None)
    if head is None:
        raise CnnlabError(f"model {cfg.name or 'from layers'!r} has no known classifier head, so it cannot freeze "
                          "a backbone or use backbone_lr; use a registered deep CNN (cnnlab models)")
    names = {n for n, _ in model.named_parameters() if n.startswith(head + ".")}
    names |= set(getattr(report, "reinitialized", ()) or ())  # fresh layers (e.g. VGG's FC at 50x50) train too
    return Transfer(names, report)


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
