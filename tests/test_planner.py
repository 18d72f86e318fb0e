"""fedtune plan: the formulas on hand-computed cases, the tables, memory feasibility, the
published runs of bench/planner_check.py, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedtune.energy.plan import default_options, make_job, make_option, plan
from fedtune.energy.plan_data import ModelPreset, hardware_table, model_presets
from fedtune.energy.planner import Job, estimate, fits, memory_bytes, trained_params, training_flops
from fedtune.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def tiny(params: float) -> ModelPreset:
    """One narrow layer: activations are a few KB, so memory is the 16 bytes/parameter."""
    return ModelPreset(name="t", params=params, layers=1, hidden=64, heads=1, source="test")


def test_flops_formulas_by_hand() -> None:
    m = tiny(1e9)
    assert training_flops(Job(model=m, tokens=1e10))[0] == pytest.approx(6e19)
    assert training_flops(Job(model=m, tokens=1e10, epochs=2, recompute=True))[0] == \
        pytest.approx(2 * 8e19)
    lora = Job(model=m, tokens=1e10, method="lora", lora_rank=8)
    n_lora = 1 * 2 * 2 * 8 * 64  # layers x targets x 2 r h
    assert trained_params(lora) == n_lora
    assert training_flops(lora)[0] == pytest.approx(4e19 + 6 * n_lora * 1e10)


def test_time_energy_co2_money_by_hand() -> None:
    job = Job(model=tiny(1e9), tokens=1e10)
    e = estimate(job, make_option({"hardware": "a100-sxm-80gb", "mfu": 0.5, "pue": 1.1,
                                   "g_per_kwh": 300, "devices": 2}))
    hours = 6e19 / (312e12 * 0.5) / 3600
    assert e.device_hours == pytest.approx(hours)
    assert e.wall_hours == pytest.approx(hours / 2)
    assert e.energy_kwh == pytest.approx(hours * 400 * 1.1 / 1000)
    assert e.co2_kg == pytest.approx(e.energy_kwh * 0.3)
    assert e.embodied_co2_kg == pytest.approx(150 * hours / (6 * 8760 * 0.85))
    assert e.money_usd == pytest.approx(hours * 1.79)
    own = estimate(job, make_option({"hardware": "a100-sxm-80gb", "acquire": "own",
                                     "mfu": 0.5, "pue": 1.1}))
    assert own.money_usd == pytest.approx(own.energy_kwh * 0.15)
    buy = estimate(job, make_option({"hardware": "rtx-4090", "acquire": "buy", "devices": 3}))
    assert buy.money_usd == pytest.approx(3 * 1599 + buy.energy_kwh * 0.15)


def test_federated_bytes_and_time_by_hand() -> None:
    job = Job(model=tiny(1e6), tokens=1e9)
    e = estimate(job, make_option({"hardware": "t4", "sites": 10, "fraction": 0.5,
                                   "rounds": 20, "link_mbps": 8, "acquire": "own",
                                   "update_bits": 16}))
    per_update = 1e6 * 2  # 16-bit values
    assert e.bytes_per_round == pytest.approx(2 * per_update * 5)
    assert e.bytes_total == pytest.approx(20 * 2 * per_update * 5)
    comm_h = 20 * 2 * per_update * 8 / 8e6 / 3600
    assert e.comm_hours == pytest.approx(comm_h)
    assert e.wall_hours == pytest.approx(e.device_hours / 5 + comm_h)
    assert e.energy_kwh == pytest.approx(e.device_hours * 70 / 1000)  # a site's PUE is 1.0


def test_memory_feasibility_flips_at_the_right_size() -> None:
    usable = 80e9 * 0.9
    act = memory_bytes(Job(model=tiny(1.0), tokens=1, seq_len=1), 1)["activations"]
    edge = (usable - act) / 16
    a100 = hardware_table()["a100-sxm-80gb"]
    assert fits(Job(model=tiny(edge * 0.999), tokens=1, seq_len=1), a100, 1)
    assert not fits(Job(model=tiny(edge * 1.001), tokens=1, seq_len=1), a100, 1)
    assert fits(Job(model=tiny(edge * 1.9), tokens=1, seq_len=1), a100, 2)  # ZeRO-3 halves it
    # LoRA on a 4-bit base: 7B in 3.4 GB of weights, fits a T4 that full training does not
    seven = model_presets()["llama-2-7b"]
    t4 = hardware_table()["t4"]
    assert not fits(Job(model=seven, tokens=1, seq_len=512), t4, 1)
    assert fits(Job(model=seven, tokens=1, seq_len=512, method="lora", base_bits=4,
                    recompute=True), t4, 1)


def test_tables_load_and_every_entry_has_its_source() -> None:
    table = hardware_table()
    required = {"h100-sxm-80gb", "a100-sxm-40gb", "a100-sxm-80gb", "l40s", "l4", "t4",
                "rtx-4090", "apple-m1-max", "epyc-9654"}
    assert required <= set(table)
    for hw in table.values():
        assert hw.spec_source and hw.tflops and hw.memory_gb > 0
        assert hw.tdp_w or hw.power_note
        assert hw.price_per_hour is None or "20" in hw.price_source  # a dated source
        assert hw.purchase_usd is None or "20" in hw.purchase_source
        assert (hw.embodied_kg is not None and hw.embodied_source) or hw.embodied_note
        if hw.die_mm2 and hw.embodied_kg:  # scaled from the A100's 150 kg by die area
            assert hw.embodied_kg == pytest.approx(150 * hw.die_mm2 / 826, abs=0.5)
    for preset in model_presets().values():
        assert preset.source and preset.params > 0


def test_published_runs_within_ten_percent() -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import planner_check
    finally:
        sys.path.pop(0)
    rows = [planner_check.check(r) for r in planner_check.RUNS]
    assert len(rows) >= 4
    for row in rows:
        assert abs(row["gpu_hours_error_frac"]) <= 0.10, row
        assert abs(row.get("energy_error_frac", 0.0)) <= 0.10, row


def test_plan_ranks_and_recommends_an_option_that_fits() -> None:
    job = make_job(model="llama-2-7b", tokens=1e8, method="lora")
    result = plan(job, default_options(), rank_by="co2")
    best = result.recommended
    assert best.fits
    usable = [e for e in result.estimates if e.fits]
    assert best.total_co2_kg == min(e.total_co2_kg for e in usable)
    assert "lowest CO2" in result.reason and result.assumptions
    import fedtune  # the public API

    assert fedtune.plan is plan and fedtune.make_job is make_job


def test_bad_input_names_the_fix() -> None:
    with pytest.raises(ConfigError, match="did you mean 'h100-sxm-80gb'"):
        make_option("h100-sxm-80g")
    with pytest.raises(ConfigError, match="tokens = -5"):
        make_job(model="llama-2-7b", tokens=-5)
    with pytest.raises(ConfigError, match="unknown model 'lama-2-7b'"):
        make_job(model="lama-2-7b", tokens=1)
    with pytest.raises(ConfigError, match="option colour"):
        make_option("t4:colour=red")
    job = make_job(model="llama-2-70b", tokens=1e9)
    with pytest.raises(ConfigError) as err:
        plan(job, [make_option("t4:sites=5"), make_option("l4:devices=2")])
    text = str(err.value)
    assert "no option fits llama-2-70b" in text and "it would fit on:" in text
    assert "x h100-sxm-80gb" in text and "--method lora" in text


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fedtune.cli", *args], capture_output=True,
                          text=True, timeout=120)


def test_cli_plan_json_and_file(tmp_path: Path) -> None:
    out = run_cli("plan", "--model", "gpt2", "--samples", "1e5", "--seq-len", "512",
                  "--output", "json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["flops"] == pytest.approx(6 * 124e6 * 1e5 * 512)
    assert len(report["options"]) == 7 and report["recommended"]
    path = tmp_path / "plan.toml"
    path.write_text('[job]\nmodel = "llama-2-7b"\ntokens = 1e9\nmethod = "lora"\n'
                    '[[option]]\nhardware = "l4"\nsites = 20\nacquire = "own"\n'
                    '[[option]]\nhardware = "h100-sxm-80gb"\n')
    out = run_cli("plan", str(path), "--recompute", "--output", "json")
    assert out.returncode == 0, out.stderr
    labels = [o["label"] for o in json.loads(out.stdout)["options"]]
    assert sorted(labels) == ["federated: 20 sites x l4 (own)", "rent h100-sxm-80gb"]
    path.write_text('[job]\nmodel = "llama-2-7b"\ntokenz = 1e9\n')
    bad = run_cli("plan", str(path))
    assert bad.returncode == 2 and "tokenz" in bad.stderr and "Traceback" not in bad.stderr
