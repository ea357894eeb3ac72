"""Pruning, FLOPs / SynOps / memory accounting and distillation: all read the layer graph."""
