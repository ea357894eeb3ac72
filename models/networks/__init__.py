"""Neurons, quantizers, surrogates, blocks, the detector and its layer graph: the trained network."""
