"""evaluate(model, data, config) -> metrics: attacks, corruptions, sweeps, transfer, sanity flags."""
