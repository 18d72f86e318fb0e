"""The ``[attack]`` section: what a simulated malicious site does, and which sites attack.

Attacks are for finding out what a site could do to the shared model before trusting a
federation; they run in simulation and on Ray (``fedtune run``). Over gRPC (``fedtune serve``)
they are a red-team exercise: the attacking sites must be named (``attack.sites``) and each
must have joined with ``fedtune join --red-team``; a site started without that flag refuses
every instruction that names it as an attacker (:func:`red_team_refusal`), so a real site never
attacks on the coordinator's word alone. ALIE and IPM, which the coordinator crafts from the
round's updates, stay in simulation.

=================  ==========================================================================
``sign_flip``      the update negated (times ``scale``)
``scale``          the update times ``scale`` (a boosted update; model replacement when
                   ``scale`` is about K / server step)
``noise``          Gaussian noise with standard deviation ``noise_std`` in place of the update
``free_rider``     no training: the update is zero (the global model sent back)
``alie``           every attacker sends ``mean - z * std`` of the round's benign updates
                   (``alie_z``; 0: the paper's z_max; :mod:`fedtune.attack.omniscient`)
``ipm``            every attacker sends ``-ipm_epsilon`` x the benign updates' mean
``label_flip``     trains on its data with every label y replaced by C - 1 - y
``backdoor``       trains with ``poison_fraction`` of its rows stamped with a trigger (the last
                   ``trigger_size`` inputs set to ``trigger_value``; for text, the first
                   ``trigger_size`` words replaced by ``trigger_token``) and labelled ``target``;
                   the update times ``scale``; the attack success rate is measured on the
                   coordinator's test set
=================  ==========================================================================

References:
    Blanchard et al. 2017 (Gaussian and sign-flip Byzantine updates); Fang et al. 2020,
    "Local Model Poisoning Attacks to Byzantine-Robust Federated Learning" (label flipping);
    Bagdasaryan et al. 2020, "How To Backdoor Federated Learning" (AISTATS; trigger and model
    replacement); Lin et al. 2019, "Free-riders in Federated Learning"; Baruch et al. 2019
    (ALIE) and Xie et al. 2020 (IPM), in :mod:`fedtune.attack.omniscient`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class AttackSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["none", "sign_flip", "scale", "noise", "free_rider", "label_flip",
                  "backdoor", "alie", "ipm"] = "none"
    fraction: float = Field(0.2, ge=0, le=1)  # of the sites, a seeded sample
    sites: list[str] = Field(default_factory=list)  # or these sites by name
    scale: float = Field(1.0, allow_inf_nan=False)  # sign_flip, scale and backdoor: the factor on the update
    noise_std: float = Field(1.0, gt=0)
    target: int = Field(0, ge=0)  # backdoor: the label triggered inputs get
    trigger_size: int = Field(4, ge=1)
    trigger_value: float = Field(3.0, allow_inf_nan=False)
    trigger_token: int = Field(12935, ge=1)  # text (token ids): "cf" in MiniLM's vocabulary
    poison_fraction: float = Field(0.5, gt=0, le=1)
    alie_z: float = Field(0.0, ge=0)  # 0: the paper's z_max for the round's size
    ipm_epsilon: float = Field(0.5, gt=0)


def check_attack(cfg: Any) -> None:
    """Rules across sections (cfg: the RunConfig)."""
    a = cfg.attack
    if a.kind == "none":
        return
    if a.kind in ("sign_flip", "scale", "backdoor") and a.scale == 0:
        raise ValueError(f"attack.kind = \"{a.kind}\" with attack.scale = 0 sends nothing; "
                         "use attack.kind = \"free_rider\" for that")
    if a.kind in ("alie", "ipm") and cfg.compression.uplink:
        raise ValueError(f"attack.kind = \"{a.kind}\" crafts dense updates from the round's; "
                         "set compression.uplink = \"\" for it")
    if not a.sites and round(a.fraction * cfg.data.num_nodes) == 0 and not cfg.data.files:
        raise ValueError(f"attack.fraction = {a.fraction} of {cfg.data.num_nodes} sites is no "
                         "site: raise attack.fraction or name attack.sites")


def attacker_sites(cfg: Any, node_ids: list[str]) -> list[str]:
    """The attacking sites: ``attack.sites`` (each must exist) or a seeded sample of
    ``attack.fraction`` of them (at least one), the same in every runtime."""
    from ..algorithms.selection import FixedSize
    from ..errors import ConfigError
    from ..seeds import derived_seed

    a = cfg.attack
    ids = sorted(node_ids)
    if a.sites:
        unknown = sorted(set(a.sites) - set(ids))
        if unknown:
            raise ConfigError(f"attack.sites names {unknown[0]!r}, which is not a site; sites: "
                              f"{', '.join(ids[:5])}{' ...' if len(ids) > 5 else ''}")
        return sorted(a.sites)
    count = max(1, round(a.fraction * len(ids)))
    return sorted(FixedSize(count=count).select(ids, 0, derived_seed(cfg.run.seed, "attack")))


def check_served(cfg: Any) -> None:
    """Rules for an attack over gRPC (``fedtune serve``): named red-team sites, and only the
    attacks a site makes itself."""
    from ..errors import ConfigError

    a = cfg.attack
    if a.kind in ("alie", "ipm"):
        raise ConfigError(f"attack.kind = \"{a.kind}\" is crafted by the coordinator from the "
                          "round's updates: it runs with fedtune run only (in process or on "
                          "Ray); remove the [attack] section to serve")
    if a.kind != "none" and not a.sites:
        raise ConfigError(f"attack.kind = \"{a.kind}\" over gRPC is a red-team exercise: name the "
                          "attacking sites in attack.sites (each joins with fedtune join "
                          "--red-team), not attack.fraction")


def red_team_refusal(ins: Any, site: str) -> str | None:
    """Why a site that was not started as a red-team site refuses a fit instruction ``ins``,
    or None: it refuses only instructions naming it as an attacker."""
    from ..node.instructions import as_text

    kind = str(ins.config.get("attack", "") or "")
    if kind in ("", "none") or site not in as_text(ins.aux.get("attack_sites")).split(","):
        return None
    return (f"site {site!r} is named as an attacker (attack.kind = \"{kind}\") but was not "
            "started as a red-team site, so it refuses the round. Join with fedtune join "
            "--red-team to take part in an attack simulation, or remove it from attack.sites")
