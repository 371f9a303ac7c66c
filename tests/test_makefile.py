"""The README's commands on machines unlike this one: no apt, an old Python, a clean slate.

Every test runs ``make`` on a copy of the Makefile in a temporary folder, as a dry run
(``-n``) or on targets that install nothing, so nothing here touches the real ``.venv``.
"""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")


@pytest.fixture
def project(tmp_path):
    for name in ("Makefile", "requirements.txt", "requirements-test.txt", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "tools", tmp_path / "tools")
    return tmp_path


def make(project, *args, path=None):
    env = {"PATH": path or "/usr/bin:/bin", "HOME": str(project)}
    return subprocess.run(["make", "--no-print-directory", *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=120)


def test_without_apt_the_commands_call_no_apt_or_dpkg_and_say_what_to_install(project):
    res = make(project, "-n", "test", "APT=")
    assert res.returncode == 0, res.stderr
    assert not re.search(r"\b(apt-get|apt|dpkg)\b", res.stdout), res.stdout
    assert "brew install node" in res.stdout and "brew install --cask chromium" in res.stdout


def test_with_apt_packages_come_without_recommends(project):
    res = make(project, "-n", "test", "APT=/usr/bin/apt-get")
    installs = [line for line in res.stdout.splitlines() if "install -y" in line]
    assert installs and all("--no-install-recommends" in line for line in installs)
    assert {"bubblewrap", "npm", "chromium"} <= set(re.findall(r"[\w-]+", " ".join(installs)))


def test_an_old_python_stops_before_a_venv_is_made(project, tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python3").write_text("#!/bin/sh\n"
                                  "case \"$1\" in --version) echo 'Python 3.10.12';; *) exit 1;; esac\n")
    (fake / "python3").chmod(0o755)
    res = make(project, "book", path=f"{fake}:/usr/bin:/bin")
    assert res.returncode != 0
    assert "Python 3.11 or newer is needed; 'python3' is Python 3.10.12" in res.stdout
    assert "PYTHON=python3.11" in res.stdout
    assert not (project / ".venv").exists()


def test_a_venv_made_with_another_python_is_named_not_reused(project):
    venv = project / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").write_text("#!/bin/sh\ncase \"$1\" in --version) echo 'Python 3.10.12';; *) exit 1;; esac\n")
    (venv / "python").chmod(0o755)
    res = make(project, "python-check", "PYTHON=" + shutil.which("python3"), path="/usr/bin:/bin")
    assert res.returncode != 0 and "make distclean" in res.stdout


def test_distclean_removes_the_venv_and_clean_keeps_it(project):
    assert "rm -rf .venv" in make(project, "-n", "distclean").stdout
    assert ".venv" not in make(project, "-n", "clean").stdout


def test_the_torch_cpu_index_is_passed_and_can_be_turned_off(project):
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in make(project, "-n", "test").stdout
    assert "--extra-index-url" not in make(project, "-n", "test", "TORCH_INDEX=").stdout


def test_serve_binds_to_this_machine_only(project):
    (project / "_build" / "html").mkdir(parents=True)
    (project / "_build" / "html" / "index.html").write_text("<html></html>")
    out = make(project, "-n", "serve", "PORT=8123").stdout
    assert "--bind 127.0.0.1" in out and "8123" in out


def test_linux_only_pins_carry_a_platform_marker():
    for line in (ROOT / "requirements-test.txt").read_text().splitlines():
        if line.startswith("nvidia-"):
            assert 'platform_system == "Linux"' in line, line


def test_on_linux_torch_is_asked_for_as_its_cpu_build_and_the_sandbox_tests_run(project):
    res = make(project, "-n", "test", "UNAME=Linux", "APT=/usr/bin/apt-get")
    assert res.returncode == 0, res.stderr
    assert "cut -d' ' -f1)+cpu\"" in res.stdout          # the pin from requirements-test.txt, then +cpu
    assert '-m "slow and not book"' in res.stdout and "not sandbox" not in res.stdout


def test_on_macos_no_cpu_label_the_sandbox_tests_are_skipped_saying_why_and_no_apt(project):
    res = make(project, "-n", "test", "UNAME=Darwin", "APT=")
    assert res.returncode == 0, res.stderr
    assert "+cpu" not in res.stdout
    assert '-m "slow and not book and not sandbox"' in res.stdout
    assert "bubblewrap sandbox, which needs Linux" in res.stdout
    assert not re.search(r"\b(apt-get|dpkg)\b", res.stdout)
