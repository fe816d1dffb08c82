"""aha: GRPO from a base model to a step-by-step reasoner, with rule-checked rewards only."""

__version__ = "0.1.0"
