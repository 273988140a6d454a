"""deploy/: the Kubernetes manifests validate against the 1.30 schemas
(offline, strict), the seccomp profile is what its generator writes and
keeps io_uring, the systemd units pass `systemd-analyze verify`, and the
container's install script works on this machine (there is no container
runtime here: the recipe is exercised, not the image)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(ROOT, "deploy")
K8S = os.path.join(DEPLOY, "kubernetes")
BIN = os.path.dirname(sys.executable)
# the image's Python is Debian's; so is this machine's when it has one
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


def validate(*paths: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [os.path.join(BIN, "kubernetes-validate"), "--strict", "-k", "1.30.0", *paths],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_manifests_validate() -> None:
    manifests = sorted(os.path.join(K8S, f) for f in os.listdir(K8S) if f.endswith(".yaml"))
    assert [os.path.basename(m) for m in manifests] == ["deployment.yaml", "hpa.yaml", "pdb.yaml", "service.yaml"]
    out = validate(*manifests)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("passed") == 4


def test_the_validation_would_catch_a_mistake(tmp_path) -> None:
    with open(os.path.join(K8S, "deployment.yaml")) as f:
        text = f.read()
    bad = tmp_path / "deployment.yaml"
    bad.write_text(text.replace("terminationGracePeriodSeconds", "terminationGracePeriod"))
    assert validate(str(bad)).returncode != 0


def test_the_drain_fits_the_grace_period() -> None:
    with open(os.path.join(K8S, "deployment.yaml")) as f:
        text = f.read()
    grace = int(text.split("terminationGracePeriodSeconds:")[1].split()[0])
    drain = int(text.split("--graceful-timeout=")[1].split()[0])
    pre_stop = int(text.split("sleep: {seconds:")[1].split("}")[0])
    assert pre_stop + drain < grace
    assert "path: /ready" in text and "path: /live" in text
    assert "localhostProfile: profiles/seccomp-uringserve.json" in text


def test_the_seccomp_profile_keeps_io_uring_and_denies_the_rest() -> None:
    with open(os.path.join(K8S, "seccomp-uringserve.json")) as f:
        profile = json.load(f)
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    allowed = {n for rule in profile["syscalls"] if rule["action"] == "SCMP_ACT_ALLOW" for n in rule["names"]}
    assert {"io_uring_setup", "io_uring_enter", "io_uring_register"} <= allowed
    assert {"read", "write", "socket", "accept4", "epoll_wait", "mmap", "clone", "execve"} <= allowed
    assert not {"ptrace", "mount", "bpf", "kexec_load", "unshare", "setns", "init_module"} & allowed
    sys.path.insert(0, K8S)
    try:
        import make_seccomp
    finally:
        sys.path.remove(K8S)
    if os.path.exists(make_seccomp.HEADER):  # linux-libc-dev, with gcc: `make test` installs it
        assert make_seccomp.profile() == profile, "run deploy/kubernetes/make_seccomp.py again"


def test_the_systemd_units_verify(tmp_path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze is missing: `make test` installs Debian's systemd package")
    for name in ("uringserve.socket", "uringserve.service"):
        with open(os.path.join(DEPLOY, "systemd", name)) as f:
            text = f.read()
        # this checkout's paths: verify checks that ExecStart's program exists
        text = text.replace("/opt/uringserve/bin/uringserve", os.path.join(BIN, "uringserve"))
        (tmp_path / name).write_text(text.replace("/srv/uringserve", ROOT))
    out = subprocess.run(
        [tool, "verify", str(tmp_path / "uringserve.socket"), str(tmp_path / "uringserve.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and out.stderr.strip() == "", out.stderr
    with open(os.path.join(DEPLOY, "systemd", "uringserve.service")) as f:
        unit = f.read()
    for line in ("NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes", "LimitMEMLOCK=", "LimitNOFILE="):
        assert line in unit
    assert "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX" in unit
    assert "io_uring_setup io_uring_enter io_uring_register" in unit


def test_the_container_recipe_installs_and_runs(tmp_path) -> None:
    prefix = tmp_path / "opt"
    out = subprocess.run(
        ["sh", os.path.join(DEPLOY, "container", "build.sh")],
        env={**os.environ, "SRC": ROOT, "PREFIX": str(prefix), "PYTHON": PYTHON},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    doctor = subprocess.run([str(prefix / "bin" / "uringserve"), "doctor"], capture_output=True, text=True, timeout=60)
    assert doctor.returncode == 0 and "defaults here" in doctor.stdout
    with open(os.path.join(DEPLOY, "container", "Containerfile")) as f:
        recipe = f.read()
    assert "deploy/container/build.sh" in recipe and "USER uringserve" in recipe
