"""The container and fresh-machine scripts' own logic, without building anything.

scripts/fresh_machine_check.sh itself (mmdebstrap, a root filesystem, the whole set-up and suite:
20-30 minutes) is not run here; see docs/how-to/containers.md, "The fresh-machine check". These tests cover what it
decides: which commands it runs (the README's, read from the commit), and which configuration it
makes visible (scripts/registry_config.sh).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / "scripts" / "fresh_machine_check.sh"
REGISTRY = ROOT / "scripts" / "registry_config.sh"


def _readme_first_commands(text: str) -> list[str]:
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_check_runs_the_readmes_first_two_commands():
    """Bug: the check runs commands of its own (or a comment line) instead of the README's."""
    r = subprocess.run(["bash", str(CHECK), "--print-commands"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == _readme_first_commands((ROOT / "README.md").read_text())
    assert len(r.stdout.splitlines()) == 2


def _repo_with_readme(tmp_path: Path, readme: str) -> Path:
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(CHECK, repo / "scripts" / CHECK.name)
    (repo / "README.md").write_text(readme)
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    for cmd in (["git", "init", "-q"], ["git", "add", "."], ["git", "commit", "-qm", "readme"]):
        subprocess.run(cmd, cwd=repo, check=True, env=env, capture_output=True)
    return repo


def test_check_follows_the_committed_readme(tmp_path):
    """Bug: the commands are written into the script, so a README change is not what the check proves."""
    repo = _repo_with_readme(
        tmp_path,
        "# x\n\n```bash\n# set up\nbash a.sh && run demo\n\n# test\nbash a.sh && test\n```\n"
        "\n```bash\nnot this one\n```\n",
    )
    r = subprocess.run(
        ["bash", "scripts/fresh_machine_check.sh", "--print-commands"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["bash a.sh && run demo", "bash a.sh && test"]
    # An uncommitted README is not what a clean clone holds: the check reads the commit's.
    (repo / "README.md").write_text("```bash\nother\nthings\n```\n")
    r = subprocess.run(
        ["bash", "scripts/fresh_machine_check.sh", "--print-commands"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.stdout.splitlines() == ["bash a.sh && run demo", "bash a.sh && test"]


@pytest.mark.parametrize("block", ["one && command\n", "a\nb\nc\n"])
def test_check_refuses_a_readme_without_exactly_two_commands(tmp_path, block):
    """Bug: a README whose first block changed shape is checked half, or with a third line ignored."""
    repo = _repo_with_readme(tmp_path, f"```bash\n{block}```\n")
    r = subprocess.run(
        ["bash", "scripts/fresh_machine_check.sh", "--print-commands"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "README.md" in lines[0] and "exactly two commands" in lines[0], r.stderr
    assert r.stdout == ""


@pytest.mark.parametrize(
    "args, key",
    [
        (["--timeout", "0"], "--timeout"),
        (["--shm-size", "lots"], "--shm-size"),
        (["--commit", "no-such-rev"], "--commit"),
        (["--frobnicate"], "--frobnicate"),
    ],
)
def test_check_bad_options_are_one_line(args, key):
    r = subprocess.run(["bash", str(CHECK), *args, "--print-commands"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0] and lines[0].startswith("fresh_machine_check.sh: error:"), r.stderr


def _registry(env: dict[str, str]) -> list[tuple[str, str]]:
    base = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root")}
    r = subprocess.run(["bash", str(REGISTRY)], env={**base, **env}, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return [tuple(line.split(" ", 1)) for line in r.stdout.splitlines()]


def test_registry_config_finds_the_files_the_configuration_names(tmp_path):
    """Bug: a certificate, a find-links folder, a file:// index or a pip.conf the configuration names
    is not made visible inside (pip then fails on certificates), or a variable is not passed through."""
    (tmp_path / "ca.pem").write_text("cert")
    (tmp_path / "wheels").mkdir()
    (tmp_path / "mirror" / "simple").mkdir(parents=True)
    (tmp_path / "mirror" / "files").mkdir()
    (tmp_path / "constraints.txt").write_text("torch<=3\n")
    (tmp_path / "pip.conf").write_text(
        f"[global]\nconstraint = {tmp_path}/constraints.txt\n"
        f"extra-index-url = https://example.invalid/simple file://{tmp_path}/mirror/simple\n"
    )
    found = _registry(
        {
            "PIP_CERT": f"{tmp_path}/ca.pem",
            "PIP_FIND_LINKS": f"{tmp_path}/wheels {tmp_path}/missing",
            "PIP_CONFIG_FILE": f"{tmp_path}/pip.conf",
            "https_proxy": "http://proxy.invalid:3128",
            "UNRELATED_PATH": f"{tmp_path}/constraints.txt",
            "XDG_CONFIG_DIRS": f"{tmp_path}/no-xdg",
        }
    )
    assert ("env", "PIP_CERT") in found and ("env", "PIP_FIND_LINKS") in found and ("env", "https_proxy") in found
    assert ("env", "PIP_CONFIG_FILE") in found
    assert ("env", "UNRELATED_PATH") not in found
    binds = {path for kind, path in found if kind == "bind"}
    assert {
        f"{tmp_path}/ca.pem",
        f"{tmp_path}/wheels",
        f"{tmp_path}/pip.conf",
        f"{tmp_path}/constraints.txt",
        f"{tmp_path}/mirror",
    } <= binds
    # a file:// index is bound with the folder its pages link into; paths that do not exist are not bound
    assert f"{tmp_path}/mirror/simple" not in binds and f"{tmp_path}/missing" not in binds
    # one line per path
    assert len([p for k, p in found if k != "env"]) == len({p for k, p in found if k != "env"})


@pytest.mark.skipif(not Path("/etc/ssl/certs/ca-certificates.crt").is_file(), reason="no system CA bundle here")
def test_registry_config_gives_a_bundle_in_etc_ssl_certs_to_ca_certificates():
    """Bug: the bundle is bound at /etc/ssl/certs/ca-certificates.crt, where ca-certificates' post-install
    script cannot replace it (EBUSY) and dpkg fails inside the fresh machine."""
    found = _registry({"SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt", "SSL_CERT_DIR": "/etc/ssl/certs"})
    assert ("ca", "/etc/ssl/certs/ca-certificates.crt") in found
    assert not any(kind == "bind" and path.startswith("/etc/ssl/certs") for kind, path in found)


def test_registry_config_takes_no_arguments():
    r = subprocess.run(["bash", str(REGISTRY), "--all"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "registry_config.sh" in r.stderr


def test_container_docs_give_savedeeps_own_shm_figure():
    """Bug: the container page's run lines and savedeep's own /dev/shm advice disagree."""
    advice = re.findall(r"--shm-size=(\w+)", (ROOT / "savedeep" / "runner" / "devices.py").read_text())
    assert advice, "savedeep/runner/devices.py no longer advises a --shm-size"
    section = (ROOT / "docs" / "how-to" / "containers.md").read_text()
    figures = set(re.findall(r"--shm-size[= ](\w+)", section))
    assert figures == set(advice), (figures, advice)
    check = CHECK.read_text()
    assert f"SHM_SIZE={advice[0]}" in check
