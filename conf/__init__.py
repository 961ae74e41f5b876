"""The Hydra config tree, shipped inside the package as ``csd_exp.conf`` (read as ``pkg://csd_exp.conf``).

Importing it registers the config's resolvers (``${method_label:...}``, csd_exp/methods.py)."""

from csd_exp.methods import register_resolvers

register_resolvers()
