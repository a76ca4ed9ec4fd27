"""The training loop, the optimiser, teacher kinds and the teacher cache, pretrained teachers."""
