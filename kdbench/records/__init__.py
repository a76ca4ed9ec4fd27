"""Records: one JSON per finished job, per-example correctness, saved students, merging folders."""
