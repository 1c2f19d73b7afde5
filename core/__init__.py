"""No torch, no flwr: the Bitcoin schema, parser, RPC client and probes (bitcoin/), the simulated chain
and datasets (data/), node health (health/), models in production (serving/), security (security/),
and the shared errors, federation settings, scoring, seeding and atomic storage."""
