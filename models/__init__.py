"""Networks only: integer LIF neurons, quantizers, surrogate gradients and spiking blocks (import the submodules)."""
