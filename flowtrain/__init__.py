"""flowtrain: train normalizing flows by maximum likelihood, configured with Hydra.

``flowtrain.load(path)`` opens a trained checkpoint from Python (``flowtrain.api``)."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy: `import flowtrain` stays cheap, and the CLI does not import the API.
    if name in ("load", "TrainedFlow"):
        from flowtrain import api

        return getattr(api, name)
    raise AttributeError(f"module 'flowtrain' has no attribute {name!r}")
