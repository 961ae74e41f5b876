"""csd-exp: Collaborative Score Distillation (Kim et al., NeurIPS 2023) as a research framework."""

__version__ = "0.1.0"


def _register_resolvers() -> None:
    """``${method_label:...}`` of conf/config.yaml, wherever the config is composed (CLI, sweeps, tests)."""
    from csd_exp.methods import register_resolvers

    register_resolvers()


_register_resolvers()
