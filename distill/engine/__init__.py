"""Runs: the one wiring of fit, validate and test, run folders, checkpoints, faults, strategies and optimizers."""
