"""The PyPI name `composer` is MosaicML's: composer ships as `composer-envs`, and says so in one
line when MosaicML's package is installed beside it (both own the import name `composer`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from composer.namesake import OWN_DISTRIBUTION, namesake_warning

ROOT = Path(__file__).resolve().parents[2]


def _mosaic_dist(site: Path) -> None:
    info = site / "composer-0.32.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: composer\nVersion: 0.32.1\n"
                                   "Summary: Composer is a PyTorch library that enables you to train neural networks faster\n")
    (info / "top_level.txt").write_text("composer\n")
    (info / "RECORD").write_text("composer/__init__.py,,\n")


def test_own_distribution_name_is_not_the_taken_one():
    text = (ROOT / "pyproject.toml").read_text()
    assert f'name = "{OWN_DISTRIBUTION}"' in text and OWN_DISTRIBUTION != "composer"


def test_no_warning_without_a_namesake():
    assert namesake_warning() is None


def test_one_line_when_mosaicmls_composer_is_installed_too(tmp_path):
    _mosaic_dist(tmp_path)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}", "COMPOSER_REGISTRY": "127.0.0.1:1/x"}
    proc = subprocess.run([sys.executable, "-m", "composer", "ref", "Bad Name"], capture_output=True, text=True, env=env)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 2, proc.stderr
    assert lines[0].startswith("composer: warning: another distribution, composer 0.32.1 (Composer is a PyTorch")
    assert "separate environments" in lines[0] and lines[1].startswith("composer: error: ")
    quiet = subprocess.run([sys.executable, "-m", "composer", "-q", "ref", "Bad Name"], capture_output=True, text=True, env=env)
    assert len(quiet.stderr.splitlines()) == 1
