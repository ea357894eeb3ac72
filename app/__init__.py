"""spquant orchestration: the CLI, configs and the train / evaluate / predict engines."""

import os

# torch's OpenMP threads busy-wait by default, which slows inference several-fold on a busy small CPU; this must be
# set before torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
