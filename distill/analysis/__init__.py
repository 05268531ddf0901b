"""What notebooks and benchmarks call: predictions of finished runs, calibration, loss curves, plots, memory."""
