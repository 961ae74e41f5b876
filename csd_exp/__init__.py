"""csd-exp: Collaborative Score Distillation (Kim et al., NeurIPS 2023) as a research framework."""

__version__ = "0.1.0"
