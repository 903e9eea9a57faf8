"""The MAP packaging files: ``apps/deploy/app.yaml`` read by the Holoscan App Packager's own reader, the
``monai-deploy package`` command it provides, and the requirements the image installs. Building the image needs
Docker and the network, so it is not run here (docs/deploy.md)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("monai.deploy", reason="MONAI Deploy SDK not installed: pip install -e '.[deploy]' (see README)")
pytest.importorskip("holoscan_cli", reason="holoscan-cli not installed: pip install -e '.[deploy]' (see README)")

import yaml  # noqa: E402
from holoscan_cli.packager.config_reader import ApplicationConfiguration  # noqa: E402

import medad_monai  # noqa: E402

APP = Path(__file__).resolve().parents[2] / "apps" / "deploy"


def test_app_yaml_is_accepted_by_the_packager_reader():
    config = ApplicationConfiguration()
    config.read(APP / "app.yaml")  # raises InvalidApplicationConfigurationError on a bad manifest
    assert config.title().startswith("medad-monai")
    raw = yaml.safe_load((APP / "app.yaml").read_text())
    assert raw["application"]["version"] == medad_monai.__version__
    assert {"cpu", "memory"} <= set(raw["resources"])


def test_the_packager_provides_monai_deploy_package_with_config_option():
    # the console script of this environment (the venv may not be on PATH when pytest runs as venv/bin/python)
    exe = shutil.which("monai-deploy", path=str(Path(sys.executable).parent))
    assert exe is not None, "holoscan-cli 3.x provides the monai-deploy command"
    out = subprocess.run([exe, "package", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for option in ("--config", "--models", "--platform", "--tag"):
        assert option in out.stdout


def test_application_folder_has_what_the_packager_expects():
    assert {"__main__.py", "app.py", "app.yaml", "requirements.txt"} <= {p.name for p in APP.iterdir()}
    requirements = [line.strip() for line in (APP / "requirements.txt").read_text().splitlines()]
    requirements = [r for r in requirements if r and not r.startswith("#")]
    assert requirements[0] == "medad-monai[deploy]" and any(r.startswith("highdicom") for r in requirements)
