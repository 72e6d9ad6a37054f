"""Running tokenspout beyond one process: nginx in front of replicas (``just cluster N``)."""
