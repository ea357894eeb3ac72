"""The detection service: a FastAPI app (``service.main.create_app``) with REST, WebSocket streams and a demo page."""

import os

# torch's OpenMP threads busy-wait by default, which slows inference several-fold on a busy small CPU; this must be
# set before torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
