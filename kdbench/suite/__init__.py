"""Suite files -> validated Suite -> jobs, each a pure function of its config."""
