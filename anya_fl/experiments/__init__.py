"""What only simulations and benches use; nothing here runs on a deployed node.

- :mod:`~anya_fl.experiments.attack_app`: the attack ClientApp, the honest ClientApp with a share of nodes
  poisoning their training labels or replies (``anya-fl simulate --attack``, the robustness table);
- :mod:`~anya_fl.experiments.poisoning`: what a poisoning node does (label flips, sign-flip, scaling,
  Gaussian and ALIE updates) and which nodes attack;
- :mod:`~anya_fl.experiments.local_grid`: an in-process Flower Grid (the real round loop and ClientApp, no
  transport);
- :mod:`~anya_fl.experiments.robustness`: the robustness table (every strategy against every attack);
- :mod:`~anya_fl.experiments.membership_inference`: what a trained fraud model leaks about its training rows;
- :mod:`~anya_fl.experiments.evasion`: valid-feature adversarial inputs against the fraud model;
- :mod:`~anya_fl.experiments.fraud_rows`: the chain, fraud rows and DP settings those two checks share.
"""

HONEST_CLIENTAPP = "fl_client.app:app"  # the one nodes deploy ([tool.flwr.app.components] in pyproject.toml)
ATTACK_CLIENTAPP = "anya_fl.experiments.attack_app:app"


def clientapp_ref(attack: str) -> str:
    """The ClientApp a simulation runs: the attack ClientApp when the run simulates an attack."""
    return ATTACK_CLIENTAPP if attack else HONEST_CLIENTAPP
