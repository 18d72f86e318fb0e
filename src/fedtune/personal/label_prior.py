"""A site's label prior in its model's head: the cheapest personalization there is.

Under label shift (each site its own class frequencies, the same inputs given a class) the
Bayes-optimal classifier for a site is the shared one with its class posteriors re-weighted by
the ratio of the site's priors to the training priors (Saerens, Latinne & Decaestecker 2002,
eq. 2.4). For a softmax classifier that is adding ``log pi_site(y) - log pi_train(y)`` to the
logits: to the bias of the model's head (its last module with parameters), so the result is an
ordinary model that fine-tuning can continue from. ``pi_site`` is the site's training label
frequencies with add-one smoothing; ``pi_train`` is taken as uniform (the shared model was
trained on the union of all sites, whose frequencies no site knows; a constant shift of every
logit changes nothing, so only the site's own counts matter). It needs no gradient step: a
site that joins after training gets it at step 0. Written here: it is one bias update.

References:
    Saerens, Latinne & Decaestecker 2002, "Adjusting the Outputs of a Classifier to New a
    Priori Probabilities: A Simple Procedure" (Neural Computation 14(1)).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import MessageError


def head_bias(module: nn.Module) -> torch.Tensor:
    """The bias of the model's last module with parameters (its classifier head)."""
    from .layout import _head

    params = dict(module.named_parameters())
    names = [n for n in _head(module) if n == "bias" or n.endswith(".bias")]
    bias = params[names[0]] if names else None
    if bias is None or bias.dim() != 1:
        raise MessageError("personalization.prior_correction needs a classifier head with a "
                           "bias (the model's last module with parameters); this model's "
                           "has none")
    return bias


@torch.no_grad()
def add_own_prior(module: nn.Module, labels: torch.Tensor) -> torch.Tensor:
    """Add the log of the site's smoothed label frequencies to the head's bias (in place);
    returns what was added."""
    bias = head_bias(module)
    classes = bias.numel()
    if labels.is_floating_point() or labels.is_complex():
        raise MessageError("personalization.prior_correction needs class labels; this task's "
                           f"targets are {labels.dtype}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= classes):
        raise MessageError(f"prior_correction: labels run to {int(labels.max())} but the "
                           f"head has {classes} outputs")
    counts = torch.bincount(labels.long().cpu(), minlength=classes).double() + 1.0
    shift = (counts / counts.sum()).log() + torch.log(torch.tensor(float(classes)))
    shift = shift.to(bias.dtype).to(bias.device)
    bias.add_(shift)
    return shift
