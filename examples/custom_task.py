"""Your own model and your own sites' data, through the Python API."""

import torch
from torch import nn

import fedtune

torch.manual_seed(0)
true_w = torch.randn(20, 3)


def site(n, shift):  # each site sees a shifted input distribution
    x = torch.randn(n, 20) + shift
    return x, (x @ true_w).argmax(1)


sites = {f"clinic-{i}": (site(200, i * 0.3), site(50, i * 0.3)) for i in range(5)}
task = fedtune.make_task(lambda: nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 3)),
                         sites, test=site(500, 0.6))
config = fedtune.load_config(overrides=["strategy.name=fedprox", "run.rounds=20"])
result = fedtune.run(config, task=task, store=False)
print(f"test accuracy {result.final_test_accuracy:.3f}, "
      f"worst site {result.fairness_global.worst:.3f}, uplink {result.total_bytes_up:,} bytes")
