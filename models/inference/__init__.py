"""Export, the integer runtime and its backends, the streaming detector, loading and the bundled model."""
