"""Training under torchrun: two CPU processes (gloo) run a few DistributedDataParallel steps and save one run."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli import main
from tests.conftest import REPO

pytestmark = pytest.mark.torchrun

TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.mark.skipif(not TORCHRUN.exists() and shutil.which("torchrun") is None, reason="torchrun not installed")
def test_two_cpu_processes_train_one_run(tmp_path):
    data = tmp_path / "synth"
    assert main(["synth", str(data), "--recordings", "2", "--duration", "0.6", "--seed", "2", "--quiet"]) == 0
    command = [
        str(TORCHRUN if TORCHRUN.exists() else shutil.which("torchrun")),
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "app.cli",
        "train",
        f"data={data}",
        "epochs=1",
        "batch=1",
        "seq_len=2",
        "bins=2",
        "input_width=64",
        "input_height=64",
        "val_recordings=1",
        "threads=1",
        f"project={tmp_path / 'runs'}",
        "name=ddp",
        "--quiet",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env=env, cwd=REPO
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "runs" / "ddp"
    assert (run / "weights" / "best.pt").is_file() and (run / "weights" / "last.pt").is_file()
    assert len((run / "metrics.csv").read_text().strip().splitlines()) == 2
    assert result.stdout.count("run folder:") == 1  # only the main process reports
