"""The facts every stage shares: errors, registries, typed config tables, machine identity, the device, metric names and job identity."""
