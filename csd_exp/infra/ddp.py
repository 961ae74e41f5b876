"""Lightning DDP for csd-exp: a strategy that stops the whole run when one rank fails, and fault injection.

What goes wrong with a plain ``DDPStrategy`` when one rank raises (measured with ``trainer=ddp_sim``): the
failing rank runs the ``on_exception`` callbacks, and any of them that calls ``trainer.save_checkpoint`` enters
a barrier that the healthy ranks, blocked in this step's all-gather, never join. Both sides then wait for the
collective timeout (5 min for ``ddp_sim``, 30 min for ``ddp``) instead of stopping. :class:`FailFastDDPStrategy`

- skips barriers once the trainer has been interrupted (a rank-local exception: the other ranks cannot be
  relied on to reach the same barrier), so the failing rank finishes its own clean-up and exits;
- when rank zero fails, logs which ranks are still running and kills them (they would otherwise wait in a
  collective until the timeout: gloo notices a dead peer at once, NCCL may not);
- refuses Hydra multirun (``-m``) with the basic launcher: Lightning relaunches ranks >= 1 with the original
  command line, so each of them would re-run the whole sweep (see ``docs/multi_gpu.md``).

When a rank >= 1 dies, the healthy ranks fail in their next collective (gloo: "Connection closed by peer") and
Lightning's child-process observer kills whatever is left within 5 s; rank zero writes ``summary.json`` with
``status: failed`` when it gets there first. See ``docs/multi_gpu.md``.
"""

from __future__ import annotations

import logging
import signal
import time
from typing import Any

from lightning_fabric.utilities.distributed import _set_num_threads_if_needed
from pytorch_lightning.strategies import DDPStrategy
from pytorch_lightning.strategies.launchers import _SubprocessScriptLauncher

log = logging.getLogger(__name__)

CHILD_EXIT_GRACE_S = 2.0  # how long rank zero waits for a crashing rank to exit before reporting / killing


def hydra_multirun_active() -> bool:
    """True inside a Hydra multirun job (``-m`` or a sweeping launcher)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
    except ImportError:  # pragma: no cover - hydra is a dependency
        return False
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


class _LauncherWithoutObserver(_SubprocessScriptLauncher):
    """Lightning's script launcher without its child-process observer thread. The observer SIGKILLs rank
    zero within 5 s of a child's failure, which can land before rank zero has written ``summary.json``;
    :class:`FailFastDDPStrategy` stops the ranks itself (rank zero learns of a dead peer from gloo / NCCL
    and kills the others in ``on_exception``)."""

    def launch(self, function, *args: Any, trainer=None, **kwargs: Any) -> Any:
        self.cluster_environment.validate_settings(num_devices=self.num_processes, num_nodes=self.num_nodes)
        if not self.cluster_environment.creates_processes_externally:
            self._call_children_scripts()
        _set_num_threads_if_needed(num_processes=self.num_processes)
        return function(*args, **kwargs)


class FailFastDDPStrategy(DDPStrategy):
    """``DDPStrategy`` that never waits on its peers after a failure (see the module docstring).

    Every argument is ``DDPStrategy``'s; ``conf/trainer/ddp.yaml`` and ``ddp_sim.yaml`` select it.
    """

    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        if type(self._launcher) is _SubprocessScriptLauncher:
            self._launcher = _LauncherWithoutObserver(self.cluster_environment, self.num_processes, self.num_nodes)
        spawns_script_copies = (
            isinstance(self._launcher, _SubprocessScriptLauncher)
            and not self.cluster_environment.creates_processes_externally
            and self.num_processes > 1
        )
        if spawns_script_copies and hydra_multirun_active():
            raise RuntimeError(
                "Hydra multirun (-m) cannot start Lightning DDP ranks with the basic launcher: Lightning starts "
                "ranks >= 1 with the original command line, so every rank would run the whole sweep. Run one "
                "command per configuration, or sweep with hydra/launcher=submitit_slurm (each SLURM job runs its "
                "ranks as SLURM tasks; see docs/multi_gpu.md)"
            )

    def _interrupted(self) -> bool:
        module = self._lightning_module
        trainer = getattr(module, "_trainer", None) if module is not None else None
        return trainer is not None and trainer.interrupted

    def barrier(self, *args: Any, **kwargs: Any) -> None:
        if self._interrupted() and self.world_size > 1:
            log.debug(
                "rank %d: skipping a barrier after a failure (the other ranks may never reach it)", self.global_rank
            )
            return
        super().barrier(*args, **kwargs)

    def on_exception(self, exception: BaseException) -> None:
        super().on_exception(exception)
        if self.world_size <= 1:
            return
        log.error(
            "rank %d of %d stopped: %s: %s", self.global_rank, self.world_size, type(exception).__name__, exception
        )
        procs = list(getattr(self._launcher, "procs", None) or [])  # ranks >= 1, only on the launching process
        if not procs:
            return
        # A peer that crashed closes its sockets as it exits: give it a moment to report its exit code.
        deadline = time.monotonic() + CHILD_EXIT_GRACE_S
        while any(proc.poll() is None for proc in procs) and time.monotonic() < deadline:
            time.sleep(0.05)
        failed = [(rank, proc) for rank, proc in enumerate(procs, start=1) if proc.returncode not in (None, 0)]
        if failed:
            names = ", ".join(
                f"local rank {rank} (pid {proc.pid}) exited with code {proc.returncode}" for rank, proc in failed
            )
            log.error("%s: see its traceback ([rank%d] lines on stderr)", names, failed[0][0])
            if isinstance(exception, RuntimeError) and exception.args and isinstance(exception.args[0], str):
                exception.args = (f"{exception.args[0]} [{names}]", *exception.args[1:])
        alive = [proc for proc in procs if proc.poll() is None]
        if alive:
            log.error(
                "stopping the %d other rank(s) still running (pids %s) so they do not wait for the %s "
                "collective timeout",
                len(alive),
                ", ".join(str(p.pid) for p in alive),
                self._timeout,
            )
            for proc in alive:
                proc.send_signal(signal.SIGKILL)  # SIGTERM is not enough for a process stuck in a collective
                proc.wait()
