"""Running jobs: one driver, the inline / pool / Ray backends, cost estimates, reproduce, external models."""
