"""The Hydra config tree, shipped inside the package as ``csd_exp.conf`` (read as ``pkg://csd_exp.conf``)."""
