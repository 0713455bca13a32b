"""``infra/install_venv.py`` (``make install``): pip's index settings reach uv, and a uv failure falls back to pip."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from infra import install_venv

PIP_CONFIG_LIST = """\
:env:.cert='/etc/ssl/certs/ca-certificates.crt'
:env:.find-links='/env/wheels'
global.cert='/etc/ssl/certs/other.crt'
global.constraint='/etc/xdg/pip/constraints.txt'
global.extra-index-url='file:///opt/pypi/simple file:///opt/pypi-more/simple'
global.find-links='/opt/wheels'
global.index-url='https://global.example/simple'
install.index-url='https://install.example/simple'
global.timeout='60'
"""


@pytest.fixture
def pip_config(monkeypatch):
    def run(cmd, **kwargs):
        assert cmd[1:] == ["-m", "pip", "config", "list"]
        return SimpleNamespace(stdout=PIP_CONFIG_LIST, returncode=0)

    monkeypatch.setattr(install_venv.subprocess, "run", run)


def test_pip_settings_follow_pips_precedence(pip_config):
    """The environment over an [install] section over [global]; whitespace-separated lists split; other keys dropped."""
    settings = install_venv.pip_settings(Path("python"))
    assert settings == {
        "cert": ["/etc/ssl/certs/ca-certificates.crt"],
        "find-links": ["/env/wheels"],
        "constraint": ["/etc/xdg/pip/constraints.txt"],
        "extra-index-url": ["file:///opt/pypi/simple", "file:///opt/pypi-more/simple"],
        "index-url": ["https://install.example/simple"],
    }


def test_uv_flags_repeat_each_value_and_keep_pips_best_match_rule(pip_config):
    flags = install_venv.uv_flags(install_venv.pip_settings(Path("python")))
    assert flags[:2] == ["--index-strategy", "unsafe-best-match"]
    pairs = list(zip(flags[2::2], flags[3::2], strict=True))
    assert pairs == [
        ("--index-url", "https://install.example/simple"),
        ("--extra-index-url", "file:///opt/pypi/simple"),
        ("--extra-index-url", "file:///opt/pypi-more/simple"),
        ("--find-links", "/env/wheels"),
        ("--constraint", "/etc/xdg/pip/constraints.txt"),
    ]


@pytest.fixture
def installers(monkeypatch, tmp_path):
    """A venv that exists, a constraints file, and both installers replaced by recorders returning ``status``."""
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "venv" / "bin" / "python").touch()
    (tmp_path / "constraints.txt").write_text("torch==2.14.1\n")
    calls, status = [], {"uv": 0, "pip": 0}
    monkeypatch.setattr(install_venv, "install_with_uv", lambda python, req, c: calls.append(("uv", req)) or status["uv"])
    monkeypatch.setattr(install_venv, "install_with_pip", lambda python, req, c, venv: calls.append(("pip", req)) or status["pip"])
    monkeypatch.delenv("LATENTFLOW_INSTALLER", raising=False)
    argv = ["--venv", str(tmp_path / "venv"), "--constraints", str(tmp_path / "constraints.txt"), "--extras", "test"]
    return SimpleNamespace(calls=calls, status=status, argv=argv)


def test_uv_first_and_pip_only_when_uv_fails(installers, monkeypatch, capsys):
    assert install_venv.main(installers.argv) == 0
    assert installers.calls == [("uv", ".[test]")]

    installers.calls.clear()
    installers.status["uv"] = 1
    assert install_venv.main(installers.argv) == 0
    assert installers.calls == [("uv", ".[test]"), ("pip", ".[test]")]
    assert "installing with pip instead" in capsys.readouterr().err

    installers.calls.clear()
    monkeypatch.setenv("LATENTFLOW_INSTALLER", "uv")  # forced: uv's failure is the result
    assert install_venv.main(installers.argv) == 1
    assert installers.calls == [("uv", ".[test]")]

    installers.calls.clear()
    monkeypatch.setenv("LATENTFLOW_INSTALLER", "pip")
    installers.status["pip"] = 3
    assert install_venv.main(installers.argv) == 3
    assert installers.calls == [("pip", ".[test]")]
    assert "FAILED (exit 3)" in capsys.readouterr().err


def test_bad_installer_or_missing_constraints_is_a_clear_error(installers, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("LATENTFLOW_INSTALLER", "conda")
    with pytest.raises(SystemExit) as exc:
        install_venv.main(installers.argv)
    assert exc.value.code == 2 and "LATENTFLOW_INSTALLER='conda': use auto, uv or pip" in capsys.readouterr().err
    monkeypatch.delenv("LATENTFLOW_INSTALLER")
    with pytest.raises(SystemExit):
        install_venv.main([*installers.argv[:2], "--constraints", str(tmp_path / "missing.txt")])
    assert "missing.txt: no such constraints file" in capsys.readouterr().err
    assert installers.calls == []


def test_uv_gets_pips_indexes_the_constraints_and_bytecode(monkeypatch, tmp_path, pip_config):
    """The uv command line: the venv's interpreter, byte-compile, pip's settings, the pinned set; no cache by default."""
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "uv").touch()
    seen = {}

    def call(cmd, env=None):
        seen["cmd"], seen["env"] = cmd, env
        return 0

    monkeypatch.setattr(install_venv.subprocess, "call", call)
    monkeypatch.delenv("UV_NO_CACHE", raising=False)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    assert install_venv.install_with_uv(bin_dir / "python", ".", Path("constraints.txt")) == 0
    cmd = seen["cmd"]
    assert cmd[:3] == [str(bin_dir / "uv"), "pip", "install"] and cmd[cmd.index("--python") + 1] == str(bin_dir / "python")
    assert "--compile-bytecode" in cmd and cmd[-4:] == ["-c", "constraints.txt", "-e", "."]
    assert "file:///opt/pypi-more/simple" in cmd and "/etc/xdg/pip/constraints.txt" in cmd
    assert seen["env"]["UV_NO_CACHE"] == "1" and seen["env"]["SSL_CERT_FILE"] == "/etc/ssl/certs/ca-certificates.crt"


def test_the_script_runs_without_the_project_installed(tmp_path):
    """``make install`` runs it with the system Python before the venv has anything: standard library only."""
    script = Path(__file__).resolve().parents[1] / "infra" / "install_venv.py"
    done = subprocess.run(["python3", "-I", str(script), "--help"], capture_output=True, text=True, cwd=tmp_path, check=False)
    assert done.returncode == 0 and "LATENTFLOW_INSTALLER" in done.stdout
