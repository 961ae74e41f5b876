"""A callback that kills one rank on purpose (tests only): what a DDP run does when a rank dies."""

import pytorch_lightning as pl


class InjectedFailure(RuntimeError):
    """Raised by :class:`FailOnRank`."""


class FailOnRank(pl.Callback):
    """Raise :class:`InjectedFailure` on one rank at the start of one step: tests what a run does when a rank dies.

    ``csd-exp trainer=ddp_sim +callbacks.fail._target_=ddp_support.FailOnRank +callbacks.fail.rank=1`` (tests/ on
    ``PYTHONPATH``)
    """

    def __init__(self, rank: int = 1, step: int = 2):
        self.rank = int(rank)
        self.step = int(step)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            raise InjectedFailure(f"injected failure on rank {self.rank} at step {self.step}")
