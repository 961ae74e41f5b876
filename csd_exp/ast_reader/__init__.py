"""Python source read without running it (:mod:`ast`): where a module lives (:mod:`.source`), what a class sets
and what a ``_target_`` builds and takes (:mod:`.signatures`).

The one reader of the package's source, below both its users: the compose-time check (:mod:`csd_exp.schema`)
and the method axis (:mod:`csd_exp.prior_families`). It imports the standard library only (pydantic lazily, to
turn an annotation into a type) and no other package of csd_exp."""
