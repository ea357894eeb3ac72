"""The CLI without torch: `predict` and `eval` of the bundled model run its export on the numpy engine."""

import json
import subprocess
import sys
import textwrap

import numpy as np

from app.cli import main
from data.formats.labels import read_labels
from models.inference.bundled import BUNDLED_EXPORT, BUNDLED_MODEL
from models.inference.loading import default_model
from tests.conftest import REPO
from tests.helpers import SAMPLE

# runs `spquant ARGS...` in a process where importing torch, torchvision or ultralytics fails
BLOCKED_CLI = textwrap.dedent("""
    import sys

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchvision", "ultralytics"):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
            return None

    sys.meta_path.insert(0, Block())
    from app.cli import main

    code = main(sys.argv[1:])
    assert not any(m.split(".")[0] in ("torch", "ultralytics") for m in sys.modules), "torch was imported"
    sys.exit(code)
""")


def _torch_free(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKED_CLI, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={"OMP_WAIT_POLICY": "PASSIVE", "PATH": "/usr/bin:/bin"})


def test_the_bundled_model_has_an_export_for_each_engine():
    assert default_model("torch") == BUNDLED_MODEL and default_model("numpy") == BUNDLED_EXPORT


def test_predict_without_torch_gives_the_torch_boxes(tmp_path):
    done = _torch_free("predict", str(SAMPLE), "--out", str(tmp_path / "numpy.npy"))
    assert done.returncode == 0, done.stderr
    assert main(["predict", str(SAMPLE), "--model", str(BUNDLED_EXPORT), "--out", str(tmp_path / "torch.npy")]) == 0
    a, b = read_labels(tmp_path / "numpy.npy"), read_labels(tmp_path / "torch.npy")
    assert len(a) == len(b) > 50
    assert np.array_equal(a["t"], b["t"]) and np.array_equal(a["class_id"], b["class_id"])
    for field in ("x", "y", "w", "h"):
        assert np.allclose(a[field], b[field], atol=1e-3), field


def test_eval_without_torch(tmp_path):
    assert main(["synth", str(tmp_path), "--recordings", "1", "--duration", "2", "--seed", "4", "--splits", "test",
                 "--quiet"]) == 0
    done = _torch_free("eval", "--data", str(tmp_path), "--split", "test", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["images"] > 0


def test_a_checkpoint_without_torch_is_a_clean_error(tmp_path):
    done = _torch_free("predict", str(SAMPLE), "--model", str(BUNDLED_MODEL), "--out", str(tmp_path / "x.npy"))
    assert done.returncode == 2 and "needs torch" in done.stderr and "Traceback" not in done.stderr


def test_commands_that_need_torch_say_which_extra_installs_it(tmp_path):
    done = _torch_free("export", "--out", str(tmp_path / "m.spq"))
    assert done.returncode == 2 and "needs torch" in done.stderr and "spquant[train]" in done.stderr
    assert "Traceback" not in done.stderr
    listing = _torch_free("--help")
    assert listing.returncode == 0 and "predict" in listing.stdout and "(unavailable: needs torch" in listing.stdout
