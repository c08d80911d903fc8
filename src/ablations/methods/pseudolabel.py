"""Pseudo-labelling (Lee 2013, as in USB): the model's own confident predictions on weakly augmented unlabeled
images become their labels. One forward of the weak view: its detached argmax is the target of the same
logits, counted where the max probability reaches tau. Everything else is SemiSupervised's."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..registry import METHODS
from .semisup import SemiSupervised


@METHODS.register("pseudolabel")
class PseudoLabel(SemiSupervised):
    """Semi-supervised: confident predictions on the weak view are trained on as labels."""

    def unlabeled_loss(self, uw: torch.Tensor, us, ui=None):
        logits = self.forward(uw)
        pseudo, mask = self.pseudo_labels(logits)
        loss = (F.cross_entropy(logits.float(), pseudo, reduction="none") * mask).mean()
        return loss, pseudo, mask
