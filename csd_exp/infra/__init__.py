"""Infrastructure around the science: the run folder and its ``summary.json``, checkpoints and their
config fingerprint, Lightning callbacks, the fail-fast DDP strategy, logger helpers, device and dtype
choices. Nothing here knows about priors, guidance or tasks; importing this package imports nothing
(each module is imported where it is used, so ``csd-exp`` can refuse a bad config before torch loads)."""
