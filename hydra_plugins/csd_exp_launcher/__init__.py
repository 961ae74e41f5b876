"""Hydra takes launchers and sweepers only from ``hydra_plugins``: ``hydra/launcher=local_parallel`` names
:class:`csd_exp.infra.launcher.LocalParallelLauncher` and ``hydra/sweeper=grid`` (the default) names
:class:`csd_exp.infra.sweep_record.GridSweeper`, under the names Hydra accepts."""

from csd_exp.infra import launcher, sweep_record


class LocalParallelLauncher(launcher.LocalParallelLauncher):
    __doc__ = launcher.LocalParallelLauncher.__doc__


class GridSweeper(sweep_record.GridSweeper):
    __doc__ = sweep_record.GridSweeper.__doc__
