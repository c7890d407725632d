import subprocess
import sys
from pathlib import Path

import yaml

from ragrec.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_config_show_applies_overrides(capsys):
    assert main(["config", "show", str(REPO / "configs/rallrec_ml100k.yaml"), "--set", "retrieval.k=7"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["retrieval"]["k"] == 7 and shown["data"]["name"] == "ml-100k"
    assert shown["lora"]["r"] == 8  # defaults are filled in


def test_bad_config_is_a_clear_error_not_a_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("retrieval: {k: -1}\n")
    assert main(["run", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "retrieval.k" in err and "Traceback" not in err


def test_data_verify_checks_md5(data_dir, capsys):
    assert main(["data", "verify", "ml-100k", "--path", str(data_dir / "ml-100k")]) == 0
    assert "checksums match" in capsys.readouterr().out


def test_job_entrypoint_is_the_run_command(tmp_path):
    """`python jobs/run.py CONFIG` (what `ray job submit` runs) goes through `ragrec run`."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "jobs/run.py"), str(tmp_path / "missing.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "missing.yaml does not exist" in proc.stderr
