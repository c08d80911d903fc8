"""FixMatch (Sohn et al., NeurIPS 2020): the prediction on a weakly augmented unlabeled image, where its max
probability reaches tau, is the label the strongly augmented view of the same image is trained to (cross-
entropy averaged over the whole unlabeled batch, masked examples counting 0). Needs data.aug.strong (the paper:
RandAugment + cutout). Everything else is SemiSupervised's."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..registry import METHODS
from .semisup import SemiSupervised


@METHODS.register("fixmatch")
class FixMatch(SemiSupervised):
    """Semi-supervised: confident weak-view predictions are the targets of the strong view."""
    needs_strong = True

    def unlabeled_loss(self, uw: torch.Tensor, us: torch.Tensor, ui=None):
        with torch.no_grad():  # the weak view only makes the target
            pseudo, mask = self.pseudo_labels(self.forward(uw))
        loss = (F.cross_entropy(self.forward(us).float(), pseudo, reduction="none") * mask).mean()
        return loss, pseudo, mask
