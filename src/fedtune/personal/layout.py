"""Which parameters travel and which stay at each site (``personalization.local``).

Patterns are shell-style globs on parameter names (``"head.*"``, ``"2.weight"``), or the
built-in sets:

* ``"head"``: the parameters of the last module that has any (the classifier of an MLP, a
  CNN or MiniLM's classification head): FedPer and FedRep keep it at each site;
* ``"norm"``: every normalization layer's parameters (BatchNorm, LayerNorm, GroupNorm,
  InstanceNorm): FedBN keeps them, and their running statistics, at each site.

A pattern that matches no trainable parameter, or patterns that together match every
trainable parameter (nothing would be shared), are errors that list the names.

References:
    Arivazhagan et al. 2019, "Federated Learning with Personalization Layers" (FedPer);
    Li et al. 2021, "FedBN: Federated Learning on Non-IID Features via Local Batch
    Normalization" (FedBN).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from torch import nn

from ..errors import ConfigError

NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
BUILT_IN = {"head": "the last module with trainable parameters",
            "norm": "every normalization layer (BatchNorm, LayerNorm, GroupNorm, InstanceNorm)"}


def _trainable(module: nn.Module) -> list[str]:
    return [n for n, p in module.named_parameters() if p.requires_grad]


def _head(module: nn.Module) -> set[str]:
    owners = [(name, m) for name, m in module.named_modules()
              if any(p.requires_grad for p in m.parameters(recurse=False))]
    if not owners:
        return set()
    name, last = owners[-1]
    prefix = f"{name}." if name else ""
    return {prefix + n for n, p in last.named_parameters(recurse=False) if p.requires_grad}


def _norm_modules(module: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in module.named_modules() if isinstance(m, NORM_TYPES)]


def _norm(module: nn.Module) -> set[str]:
    out = set()
    for name, m in _norm_modules(module):
        prefix = f"{name}." if name else ""
        out |= {prefix + n for n, p in m.named_parameters(recurse=False) if p.requires_grad}
    return out


def local_names(module: nn.Module, patterns: Sequence[str]) -> set[str]:
    """The trainable parameters ``patterns`` keep at each site (an empty set for none)."""
    names = _trainable(module)
    kept: set[str] = set()
    for pattern in patterns:
        if pattern == "head":
            found = _head(module)
        elif pattern == "norm":
            found = _norm(module)
            if not found and not _norm_modules(module):
                raise ConfigError("personalization.local = \"norm\" but the model has no "
                                  "normalization layer; FedBN needs one (BatchNorm, "
                                  "LayerNorm, ...), or name parameters with a pattern")
        else:
            found = {n for n in names if fnmatch.fnmatchcase(n, pattern)}
        if not found and pattern != "norm":
            shown = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")
            raise ConfigError(f"personalization.local pattern {pattern!r} matches no trainable "
                              f"parameter; the model's are: {shown} (or use a built-in set: "
                              f"{', '.join(sorted(BUILT_IN))})")
        kept |= found
    if names and kept >= set(names):
        raise ConfigError(f"personalization.local = {list(patterns)} keeps every trainable "
                          "parameter at the sites, so nothing would be shared; keep a part "
                          "(e.g. \"head\") or use personalization.method = \"ditto\" for a "
                          "whole personal model")
    return kept


def local_buffer_names(module: nn.Module, patterns: Sequence[str],
                       buffers: str) -> set[str]:
    """The floating-point buffers that stay at each site: all of them with ``buffers =
    "local"``; with ``"travel"`` those of normalization layers FedBN keeps ("norm")."""
    float_buffers = [n for n, b in module.named_buffers() if b.is_floating_point()]
    if buffers == "local":
        return set(float_buffers)
    if "norm" not in patterns:
        return set()
    kept = set()
    for name, m in _norm_modules(module):
        prefix = f"{name}." if name else ""
        kept |= {prefix + n for n, b in m.named_buffers(recurse=False) if b.is_floating_point()}
    return kept
