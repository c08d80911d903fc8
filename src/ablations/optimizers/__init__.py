"""Optimisers, one file each, registered in OPTIMIZERS (registry.py): name -> build(groups, cfg) -> Optimizer.

`groups` are optim.param_groups' parameter groups (each with weight_decay, lr_scale and level); the builder may
split or re-mark them (muon moves conv filters to groups of its own) and returns a torch Optimizer over them.
The caller sets every group's lr to cfg.lr * lr_scale afterwards, so a builder's lr argument is only torch's
default. Entry metadata: `biases_as_norms=True` puts every 1-d parameter at lr * norm_lr_scale (as norm layers'
parameters are), for optimisers whose published recipe scales all biases."""
