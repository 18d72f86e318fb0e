"""The accountant is dp-accounting on the events the run really has; calibration meets its
target; noise is N(0, std^2) and, by default, not reproducible."""

from __future__ import annotations

import itertools

import dp_accounting as dpa
import pytest
import torch
from dp_accounting import pld, rdp

from fedtune.privacy.accountant import PLD_INTERVAL, Accountant, Sampling, calibrate
from fedtune.privacy.noise import gaussian

POISSON = Sampling("poisson", 1000, rate=0.05)
EVERYONE = Sampling("fixed", 20, size=20)
WOR = Sampling("fixed", 500, size=50)


def test_poisson_rounds_are_the_poisson_subsampled_gaussian_of_dp_accounting():
    acc = Accountant(noise_multiplier=1.1, sampling=POISSON, delta=1e-5)
    direct = pld.PLDAccountant(value_discretization_interval=PLD_INTERVAL)
    direct.compose(dpa.PoissonSampledDpEvent(0.05, dpa.GaussianDpEvent(1.1)), 40)
    assert acc.epsilon(40) == pytest.approx(direct.get_epsilon(1e-5), rel=1e-9)
    cross = rdp.RdpAccountant()
    cross.compose(dpa.PoissonSampledDpEvent(0.05, dpa.GaussianDpEvent(1.1)), 40)
    assert acc.epsilon_rdp(40) == pytest.approx(cross.get_epsilon(1e-5), rel=1e-9)
    assert acc.epsilon_rdp(40) >= acc.epsilon(40), "PLD is the tighter bound"
    assert acc.bound.startswith("PLD, Poisson sampling q = 0.05")


def test_every_site_every_round_is_the_plain_gaussian_composed():
    acc = Accountant(noise_multiplier=3.0, sampling=EVERYONE, delta=1e-3)
    direct = pld.PLDAccountant(value_discretization_interval=PLD_INTERVAL)
    direct.compose(dpa.GaussianDpEvent(3.0), 10)
    assert acc.epsilon(10) == pytest.approx(direct.get_epsilon(1e-3), rel=1e-5)
    # one round, by hand: the Gaussian mechanism's exact (eps, delta) curve (Balle and Wang
    # 2018) is what the PLD of one Gaussian gives, up to its discretization
    exact = dpa.get_epsilon_gaussian(3.0, 1e-3)
    assert acc.epsilon(1) == pytest.approx(exact, abs=2e-3)


def test_fixed_size_sampling_is_rdp_without_replacement_with_twice_the_sensitivity():
    acc = Accountant(noise_multiplier=2.0, sampling=WOR, delta=1e-5, method="pld")
    assert acc.method == "rdp", "PLD has no bound for sampling without replacement"
    direct = rdp.RdpAccountant(neighboring_relation=dpa.NeighboringRelation.REPLACE_ONE)
    direct.compose(dpa.SampledWithoutReplacementDpEvent(500, 50, dpa.GaussianDpEvent(1.0)), 30)
    assert acc.epsilon(30) == pytest.approx(direct.get_epsilon(1e-5), rel=1e-9)
    assert "replace-one" in acc.bound


def test_epsilon_grows_with_rounds_and_the_budget_search_is_exact():
    acc = Accountant(noise_multiplier=0.9, sampling=POISSON, delta=1e-5)
    eps = [acc.epsilon(r) for r in range(0, 30)]
    assert eps[0] == 0 and all(a < b for a, b in itertools.pairwise(eps))
    k = acc.rounds_within(eps[17] + 1e-9, 100)
    assert k == 17
    assert acc.rounds_within(0.001, 100) == 0


@pytest.mark.parametrize("sampling", [POISSON, EVERYONE, WOR], ids=["poisson", "all", "wor"])
def test_calibration_meets_its_target(sampling):
    z = calibrate(4.0, delta=1e-5, rounds=20, sampling=sampling)
    acc = Accountant(noise_multiplier=z, sampling=sampling, delta=1e-5)
    assert 3.9 <= acc.epsilon(20) <= 4.0
    louder = Accountant(noise_multiplier=z * 0.95, sampling=sampling, delta=1e-5)
    assert louder.epsilon(20) > 4.0, "the smallest such noise, not any"


def test_bad_accountant_parameters_are_refused():
    with pytest.raises(ValueError, match="noise_multiplier"):
        Accountant(noise_multiplier=-1.0, sampling=POISSON, delta=1e-5)
    with pytest.raises(ValueError, match="delta"):
        Accountant(noise_multiplier=1.0, sampling=POISSON, delta=1.0)
    with pytest.raises(ValueError, match="standard deviation"):
        gaussian(10, -1.0, secure=True)


def test_secure_noise_has_the_asked_spread_and_is_never_the_same_twice():
    std = 0.37
    x = gaussian(400_000, std, secure=True).double()
    # mean and standard deviation within 5 standard errors; kurtosis of a normal is 3
    assert abs(x.mean().item()) < 5 * std / 400_000 ** 0.5
    assert abs(x.std().item() / std - 1) < 5 / (2 * 400_000) ** 0.5
    z = (x - x.mean()) / x.std()
    assert abs((z ** 4).mean().item() - 3.0) < 0.05
    assert (z.abs() > 4).float().mean().item() < 2e-4  # tails of N(0, 1): 6.3e-5
    assert not torch.equal(gaussian(100, 1.0, secure=True), gaussian(100, 1.0, secure=True))


def test_seeded_noise_is_reproducible_and_has_the_asked_spread():
    a = gaussian(200_000, 2.0, secure=False, generator=torch.Generator().manual_seed(3))
    b = gaussian(200_000, 2.0, secure=False, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert abs(a.double().std().item() / 2.0 - 1) < 0.01
    with pytest.raises(ValueError, match="generator"):
        gaussian(3, 1.0, secure=False)


def test_the_privacy_command_calibrates_without_running(tmp_path):
    import json
    import subprocess

    from .conftest import FEDTUNE

    proc = subprocess.run(
        [FEDTUNE, "privacy", "--set", "data.num_nodes=1000", "--set", "strategy.fraction=0.1",
         "--set", 'strategy.selection="poisson"', "--set", "run.rounds=50",
         "--target-epsilon", "6", "--output", "json"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    acc = Accountant(noise_multiplier=report["noise_multiplier"], delta=1e-5,
                     sampling=Sampling("poisson", 1000, rate=0.1))
    assert report["epsilon"] == pytest.approx(acc.epsilon(50)) and report["epsilon"] <= 6
    assert not (tmp_path / ".fedtune").exists(), "nothing ran, nothing was stored"
    bad = subprocess.run([FEDTUNE, "privacy", "--set", "privacy.delta=0.5"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert bad.returncode == 2 and "privacy.delta = 0.5 is not below 1 / 10" in bad.stderr
