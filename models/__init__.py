"""Everything about the network, in three packages (import the submodules).

``models.networks``: neurons, quantizers, surrogates, blocks, the detector and its layer graph (no data, app or service
imports). ``models.compress``: pruning, FLOPs / memory accounting, distillation, all reading the layer graph.
``models.inference``: the ``.spq`` export, the integer runtime's backends, the streaming detector, the bundled model.
"""
