"""flowtrain: train normalizing flows by maximum likelihood, configured with Hydra."""

__version__ = "0.1.0"
