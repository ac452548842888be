"""Reading and writing: Hub resolution, strict checkpoint loading, the weight table, quantisation,
atomic file writes, and the converter."""
