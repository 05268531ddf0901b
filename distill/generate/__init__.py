"""Generation with a trained draft: greedy speculative decoding (lossless) and its measurement."""
