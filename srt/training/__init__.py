"""Training: the policy modules, the DPO objective, reference log-probs, export and sharding."""
