"""SlimeMold topology: the pure graph core and the manager process."""
