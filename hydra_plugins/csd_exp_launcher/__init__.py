"""Hydra takes launchers only from ``hydra_plugins``: ``hydra/launcher=local_parallel`` names the class here,
which is :class:`csd_exp.infra.launcher.LocalParallelLauncher` under the name Hydra accepts."""

from csd_exp.infra import launcher


class LocalParallelLauncher(launcher.LocalParallelLauncher):
    __doc__ = launcher.LocalParallelLauncher.__doc__
