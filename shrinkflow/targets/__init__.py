"""Deployment targets: one module per runtime (converter + runtime adapter), each
registering itself in :mod:`shrinkflow.targets.base`."""
