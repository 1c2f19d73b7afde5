"""The Flower ClientApp nodes deploy: local DP training and evaluation on the node's own data (``app``), where
that data comes from (``node_data``); its privacy ledger and budgets are :mod:`models.privacy`.
It holds no attack code: attack simulation is ``anya_fl.experiments``."""
