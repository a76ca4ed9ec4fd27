"""Statistics over seeds and examples: spread, paired tests, the re-run noise model."""
