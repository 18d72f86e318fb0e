"""The planner's estimate for the run being made, stored beside what the meters measured
(``RunResult.extra["plan"]``; ``fedtune show`` prints both).

FLOPs come from the model itself: one forward pass of a test batch under PyTorch's
``FlopCounterMode`` gives the forward FLOPs per example for any architecture (MLP, CNN,
transformer). A model made only of ``nn.Sequential``, ``nn.Linear`` and layers that
FlopCounterMode counts as free (activations, norms, dropout, flatten) is counted here
instead, with forward hooks on its Linear layers and the same formula (2 x rows x in x out;
a test checks both agree): FlopCounterMode's first use in a process imports TorchDynamo,
1.4 to 2.5 s on this machine, which every `fedtune run` paid at its end. A training example
costs three forwards when every weight trains (the 1:2 forward-backward split behind 6ND,
Kaplan et al. 2020) and two when most weights are frozen (LoRA: the frozen weights'
gradients are skipped). The work is what the config asks: local steps x batch on the
expected sites per round, central pretraining and steps, the central test set every round,
and the final per-site evaluation with its fine-tuning steps.

Time and energy use the planner's assumptions for this machine's processor: peak =
clock x FLOP/cycle of its vector units per hardware thread, the planner's MFU for its kind,
and the same watts per thread the meter charges (CodeCarbon's TDP table). Bytes are the
float32 model down and the update up for every taking part site, SCAFFOLD's control variates
beside them, and the model down to every evaluated site. Compressed updates are not modelled.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .planner import DEFAULT_MFU

if TYPE_CHECKING:
    from ..coordinator import Coordinator

SAMPLED_SITES = 1000  # sizes of at most this many sites are read to estimate the mean


# layers FlopCounterMode counts no FLOPs for (it counts matrix products and convolutions)
_FREE_LAYERS = (torch.nn.ReLU, torch.nn.GELU, torch.nn.Tanh, torch.nn.Sigmoid,
                torch.nn.Flatten, torch.nn.Dropout, torch.nn.Identity, torch.nn.BatchNorm1d,
                torch.nn.LayerNorm)


def _plain(module: torch.nn.Module) -> bool:
    """Only Sequential containers of Linear and free layers (no forward of its own that
    could multiply matrices where no hook sees it)."""
    if type(module) is torch.nn.Sequential:  # a subclass may have its own forward
        return all(_plain(m) for m in module)
    return type(module) is torch.nn.Linear or type(module) in _FREE_LAYERS


def forward_flops_per_example(module: torch.nn.Module, x: torch.Tensor) -> float:
    """FLOPs of one forward pass per example on the batch ``x``: FlopCounterMode's count
    (for a plain Linear stack, the same formula applied here; see the module docstring)."""
    was_training = module.training
    module.eval()
    flops = [0]

    def linear(layer: torch.nn.Linear, inputs: tuple[torch.Tensor, ...], _: object) -> None:
        n_in, n_out = layer.in_features, layer.out_features
        flops[0] += 2 * (inputs[0].numel() // n_in) * n_in * n_out

    try:
        if _plain(module):
            hooks = [m.register_forward_hook(linear) for m in module.modules()
                     if type(m) is torch.nn.Linear]
            try:
                with torch.no_grad():
                    module(x)
            finally:
                for hook in hooks:
                    hook.remove()
        else:
            from torch.utils.flop_counter import FlopCounterMode

            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                module(x)
            flops[0] = counter.get_total_flops()
    finally:
        module.train(was_training)
    return float(flops[0]) / max(1, len(x))


def cpu_peak_per_thread() -> tuple[float, str]:
    """Peak fp32 FLOP/s of one hardware thread: clock x FLOP/cycle of its vector units (two
    FMA pipes: 64 with Intel AVX-512, 32 with AVX2 and FMA, AMD's AVX-512 included since Zen 4
    runs it on 256-bit pipes; 16 with AVX; 8 otherwise)."""
    mhz, vendor = 0.0, ""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "cpu MHz" and not mhz:
                mhz = float(value)
            elif key == "flags" and not flags:
                flags = set(value.split())
            elif key == "vendor_id" and not vendor:
                vendor = value.strip()
    except (OSError, ValueError):
        pass
    if "avx512f" in flags and vendor == "GenuineIntel":
        per_cycle = 64
    elif {"avx2", "fma"} <= flags:
        per_cycle = 32
    else:
        per_cycle = 16 if "avx" in flags else 8
    ghz = mhz / 1000 if mhz else 2.0
    source = f"{ghz:.2f} GHz x {per_cycle} FLOP/cycle" + ("" if mhz else " (clock unknown: 2 GHz)")
    return ghz * 1e9 * per_cycle, source


def plan_own_run(coord: Coordinator) -> dict[str, Any]:
    """What the planner expects this run to cost: FLOPs, CPU seconds, joules, CO2, bytes."""
    cfg, bench, runtime = coord.cfg, coord.bench, coord.runtime
    module = bench.flat.module
    trained = bench.flat.spec.numel
    total = sum(p.numel() for p in module.parameters())
    batch = cfg.local.batch_size
    x = coord.x_test[:batch] if len(coord.x_test) else None
    if x is None:
        return {"skipped": "no central test set to count the model's FLOPs on"}
    forward = forward_flops_per_example(module, x)
    train_per_example = (3 if trained >= total / 2 else 2) * forward
    ids = runtime.node_ids
    step = max(1, len(ids) // SAMPLED_SITES)
    sizes = [runtime.train_examples(i) or 0 for i in ids[::step]]
    per_fit = sum(coord.plan.num_steps(n) * batch for n in sizes) / max(1, len(sizes))
    s = cfg.strategy
    from ..privacy.sampling import sampling_for

    k = sampling_for(s.selection, population=len(ids), fraction=s.fraction, count=s.count,
                     min_nodes=s.min_nodes).expected_sites
    rounds = cfg.run.rounds
    evaluated = min(len(ids), cfg.evaluation.max_sites)
    c, ev = cfg.central, cfg.evaluation
    examples = {
        "train": rounds * k * per_fit,
        "central": (c.pretrain_steps + c.steps_between_rounds * rounds) * c.batch_size,
        "personalize": evaluated * ev.personalize_steps * batch,
    }
    mean_test = sum(n * cfg.data.node_test_fraction / (1 - cfg.data.node_test_fraction)
                    for n in sizes) / max(1, len(sizes))
    evals = len(coord.x_test) * (rounds + 2) + evaluated * 2 * mean_test
    flops = train_per_example * sum(examples.values()) + forward * evals
    peak, peak_source = cpu_peak_per_thread()
    mfu = DEFAULT_MFU["cpu"]
    cpu_s = flops / (peak * mfu)
    per_update = 4 * trained * (2 if s.name == "scaffold" else 1)
    nbytes = rounds * k * 2 * per_update + evaluated * 4 * trained
    out: dict[str, Any] = {
        "flops": flops, "forward_flops_per_example": forward, "cpu_s": cpu_s,
        "bytes": nbytes, "peak_flops_per_thread": peak, "mfu": mfu,
        "assumptions": f"peak {peak_source} per thread, MFU {mfu:.0%} (the planner's for "
                       "CPUs), FLOPs counted by torch on one test batch",
    }
    if bench.flat.device.type != "cpu":
        out["skipped_energy"] = "the run trains on a GPU: its own plan is for CPU runs"
        return out
    watts = coord.meter.watts_per_thread
    out["energy_j"] = cpu_s * watts
    out["co2_g"] = out["energy_j"] * coord.co2_per_joule
    if cfg.compression.uplink or cfg.compression.downlink:
        out["bytes_note"] = "compression is not modelled: the bytes are uncompressed"
    return out


def plan_vs_actual(plan: dict[str, Any], result: Any) -> dict[str, float]:
    """Measured over estimated, for each figure both have."""
    out = {}
    bytes_ = getattr(result, "total_bytes_down", 0) + getattr(result, "total_bytes_up", 0)
    pairs = {"energy": (plan.get("energy_j"), getattr(result, "total_energy_j", None)),
             "bytes": (plan.get("bytes"), bytes_)}
    for name, (est, measured) in pairs.items():
        if est and measured is not None and math.isfinite(measured):
            out[f"{name}_measured_over_planned"] = measured / est
    return out
