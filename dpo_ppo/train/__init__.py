"""The two trainers and what they share: ``sampling`` (keyed sampling, log-probs, sequence KL),
``dpo`` (TRL's DPOTrainer on token ids), ``ppo`` (our PPO with a KL-controlled penalty)."""
