"""Label propagation (Iscen et al., CVPR 2019, "Label Propagation for Deep Semi-supervised Learning", after
Zhou et al. 2004) on the frozen backbone's features. Once, before training: a k-nearest-neighbour graph over
the labeled and unlabeled images (cosine similarity of their features, the mean over the cached weak views),
edge weights max(cos, 0) ** gamma, symmetrised and normalised (S = D^-1/2 W D^-1/2); the labels spread over
it by solving (I - alpha S) Z = Y with conjugate gradients (Y: one column per class, 1 / class size on that
class's labeled rows). Each unlabeled image gets the argmax of its row as pseudo-label, weighted by its
certainty (1 - entropy of the L1-normalised row / log C, scaled to max 1) and by its class's inverse share
(class balancing); the head then trains on labeled + weighted pseudo-labeled features (the unlabeled loss).

Unlike pseudo-labelling and FixMatch the targets come from the graph, not from the head's own confidence, so
the head's mistakes do not feed back into them (the confirmation bias that sinks FixMatch at 5 labels per
class, docs/results/fewlabels.md). The backbone is frozen, so Iscen's alternation (re-extract features,
propagate again) has nothing to re-extract: one propagation is the whole method. `tau` is unused: every
pseudo-label counts, with its weight."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import FieldError, RunConfig, opt
from ..registry import METHODS
from ..runtime import Runtime
from .semisup import SemiSupConfig, SemiSupervised


@dataclass(frozen=True)
class LabelPropConfig(SemiSupConfig):
    """The graph and the propagation (Iscen et al.'s defaults)."""
    k: int = opt(50, "neighbours per image in the kNN graph (fewer when there are fewer images)", ge=1)
    alpha: float = opt(0.99, "propagation: weight of the neighbours' labels against the image's own", gt=0, lt=1)
    gamma: float = opt(3.0, "edge weight = max(cosine similarity, 0) ** gamma", gt=0)
    cg_iters: int = opt(20, "conjugate-gradient iterations solving (I - alpha S) Z = Y", ge=1)


@METHODS.register("labelprop")
class LabelProp(SemiSupervised):
    """Semi-supervised: labels propagated over a kNN graph of frozen features, weighted by certainty."""
    Config = LabelPropConfig

    @classmethod
    def check(cls, cfg: RunConfig) -> None:
        super().check(cfg)
        mc = cfg.method
        # the graph is built once from cached features: anything that makes them change or not cached is refused
        for key, bad in (("train_stages", mc.train_stages != 0), ("cache_features", mc.cache_features != "auto"),
                         ("tta", mc.tta != 0)):
            if bad:
                raise FieldError(f"method.{key}", "labelprop propagates over the frozen backbone's cached features: "
                                 f"leave train_stages at 0, cache_features at auto and tta at 0, got "
                                 f"{getattr(mc, key)!r}")
        for key, bad in (("dist_align", mc.dist_align), ("threshold", mc.threshold != "fixed")):
            if bad:
                raise FieldError(f"method.{key}", "labelprop's pseudo-labels come from the graph, not the head's "
                                 f"predictions: there is nothing to align or threshold, got {getattr(mc, key)!r}")

    def __init__(self, cfg: RunConfig, rt: Runtime, run_dir: Path, refs: dict[str, Path]):
        super().__init__(cfg, rt, run_dir, refs)
        mc, n_cls = cfg.method, len(self.data.classes)
        t0 = time.perf_counter()
        feats = torch.cat([self.tv.float().mean(0), self.uw.float().mean(0)])  # (L + U, D): labeled rows first
        n_lab = self.tv.shape[1]
        z = propagate(feats, self.ty.long(), n_lab, n_cls, mc.k, mc.alpha, mc.gamma, mc.cg_iters)  # (L + U, C)
        label, weight = certainty(z)
        label[:n_lab] = self.ty.long()
        weight[:n_lab] = 1.0
        # class balancing: a class's pseudo-labels weigh (N / C) / (images labeled with it); (C,)
        counts = torch.bincount(label, minlength=n_cls).float()
        self.class_weight = (len(label) / n_cls) / counts.clamp_min(1.0)
        self.u_label, self.u_weight = label[n_lab:], weight[n_lab:]  # (U,) each
        self.lp_stats = {"seconds": time.perf_counter() - t0, "nodes": len(label), "k": min(mc.k, len(label) - 1),
                         "pl_acc_all": 100.0 * (self.u_label == self.uy).float().mean().item(),
                         "mean_weight": self.u_weight.mean().item()}

    def unlabeled_loss(self, uw: torch.Tensor, us, ui: torch.Tensor):
        pseudo = self.u_label[ui]
        w = self.u_weight[ui] * self.class_weight[pseudo]  # (U,)
        loss = (F.cross_entropy(self.forward(uw).float(), pseudo, reduction="none") * w).mean()
        return loss, pseudo, torch.ones_like(pseudo, dtype=torch.bool)

    def finish(self, result: dict) -> dict:
        return {**super().finish(result), "label_prop": self.lp_stats}


def knn_graph(x: torch.Tensor, k: int, gamma: float, chunk: int = 2048) -> torch.Tensor:
    """The symmetric (N, N) sparse weight matrix W + W^T of the rows of x (N, D): each row's k most cosine-
    similar other rows, weight max(cos, 0) ** gamma. Exact search in chunks of rows ((chunk, N) similarities at
    a time: 370 MB for N = 45,000)."""
    x = F.normalize(x.float(), dim=1)
    n, dev = len(x), x.device
    k = min(k, n - 1)
    idx, val = [], []
    for s in range(0, n, chunk):
        sim = x[s:s + chunk] @ x.T  # (c, N)
        rows = torch.arange(len(sim), device=dev)
        sim[rows, rows + s] = -2.0  # never its own neighbour (cosines are >= -1)
        v, i = sim.topk(k, dim=1)
        idx.append(i)
        val.append(v.clamp_min(0) ** gamma)
    cols, vals = torch.cat(idx).reshape(-1), torch.cat(val).reshape(-1)
    rows = torch.arange(n, device=dev).repeat_interleave(k)
    w = torch.sparse_coo_tensor(torch.stack([torch.cat([rows, cols]), torch.cat([cols, rows])]),
                                torch.cat([vals, vals]), (n, n), check_invariants=True
                                ).coalesce()  # duplicates (mutual pairs) add up
    return w


def propagate(x: torch.Tensor, y: torch.Tensor, n_lab: int, n_cls: int, k: int, alpha: float, gamma: float,
              iters: int) -> torch.Tensor:
    """(N, C) propagated scores Z of the rows of x (N, D), whose first n_lab rows carry the labels y (n_lab,):
    Z solves (I - alpha S) Z = Y, S = D^-1/2 W D^-1/2 of the kNN graph W, Y[i, y_i] = 1 / (size of class y_i)."""
    w = knn_graph(x, k, gamma)
    i, v = w.indices(), w.values()
    d = torch.zeros(len(x), device=x.device).index_add_(0, i[0], v)
    d_is = d.clamp_min(1e-12).rsqrt()  # an isolated node (no positive similarity) keeps only its own label
    s = torch.sparse_coo_tensor(i, v * d_is[i[0]] * d_is[i[1]], w.shape, is_coalesced=True, check_invariants=True)
    target = torch.zeros(len(x), n_cls, device=x.device)
    sizes = torch.bincount(y, minlength=n_cls).float()
    target[torch.arange(n_lab, device=x.device), y] = 1.0 / sizes[y]
    return conjugate_gradient(lambda p: p - alpha * (s @ p), target, iters)


def conjugate_gradient(matvec, b: torch.Tensor, iters: int) -> torch.Tensor:
    """x with A x = b for every column of b (N, C) at once (independent CG runs, one per column); A is
    symmetric positive definite, given as matvec(p) = A p. `iters` steps, as scipy's cg with maxiter."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = (r * r).sum(0)  # (C,)
    for _ in range(iters):
        ap = matvec(p)
        a = rs / (p * ap).sum(0).clamp_min(1e-30)  # a column already solved (rs 0) stays put
        x += a * p
        r -= a * ap
        rs_new = (r * r).sum(0)
        p = r + (rs_new / rs.clamp_min(1e-30)) * p
        rs = rs_new
    return x


def certainty(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels (N,), weights (N,)) of propagated scores z (N, C): the argmax of each row, and 1 - entropy of
    the row (negatives clipped, L1-normalised) / log C, scaled so that the largest weight is 1."""
    p = z.clamp_min(0)
    p = p / p.sum(1, keepdim=True).clamp_min(1e-12)
    ent = -(p * p.clamp_min(1e-12).log()).sum(1)
    w = 1 - ent / math.log(z.shape[1])
    # a row with no positive score (an image no label reached) has p = 0, entropy 0: weight it 0, not 1
    w = torch.where(p.sum(1) > 0, w, torch.zeros_like(w))
    return p.argmax(1), w / w.max().clamp_min(1e-12)


__all__ = ["LabelProp", "LabelPropConfig", "certainty", "conjugate_gradient", "knn_graph", "propagate"]
