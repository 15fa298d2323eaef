"""dpo-ppo: what DPO and PPO do differently to a language model, measured at matched KL."""

__version__ = "0.1.0"
