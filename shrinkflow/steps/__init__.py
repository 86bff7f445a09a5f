"""Step kinds: one module per kind, declaring its typed config and its run function and
registering itself with :func:`shrinkflow.steps.base.step`."""
