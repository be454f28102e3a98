"""Training data: the shared clip format, the synthetic generator, real clips, and the pair dataset."""
