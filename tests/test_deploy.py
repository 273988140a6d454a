"""deploy/: the Kubernetes manifests validate against the 1.30 schemas
(offline, strict) and fit together (parsed as YAML: ports, probes, args the
command accepts, selectors), the seccomp profile is what its generator
writes and keeps io_uring, the systemd units pass `systemd-analyze verify`,
and the container's install script works on this machine and the package
it installs serves the image's CMD (there is no container runtime here: the
recipe is exercised, not the image) and its built-in protocols (`uringserve
resp`, `uringserve echo`) from a directory outside any checkout."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, Proc, children
from http_client import Resp, exchange

from uringserve.cli import build_parser

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


def load(name: str) -> dict:
    """One manifest, parsed as Kubernetes parses it (YAML; PyYAML comes with kubernetes-validate)."""
    with open(os.path.join(K8S, name)) as f:
        (doc,) = list(yaml.safe_load_all(f))
    return doc


def test_the_manifests_fit_together_and_the_drain_fits_the_grace_period() -> None:
    dep, svc, pdb, hpa = (load(f"{n}.yaml") for n in ("deployment", "service", "pdb", "hpa"))
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    # the args are the command's own: its parser takes them, with the pod's environment
    env = {e["name"]: e["value"] for e in c.get("env", [])}
    args = build_parser(env).parse_args(c["args"])
    assert args.cmd == "run" and args.app == "apps.http:app" and args.keepalive_timeout == 60
    # preStop, then the drain, must end before the kubelet's SIGKILL
    pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop + args.graceful_timeout < pod["terminationGracePeriodSeconds"]
    # the named ports are where the command listens; probes and the Service use them
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": args.port, "metrics": args.metrics[1]}
    assert args.host == ["0.0.0.0"] and args.metrics[0] == "0.0.0.0"  # reachable from the kubelet
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "metrics"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/live", "port": "metrics"}
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(args.metrics[1])
    assert {p["targetPort"] for p in svc["spec"]["ports"]} == set(ports)
    assert pod["securityContext"]["seccompProfile"] == {
        "type": "Localhost",
        "localhostProfile": "profiles/seccomp-uringserve.json",
    }
    assert pod["securityContext"]["runAsNonRoot"] is True
    # everything selects the Deployment's pods, and the autoscaler scales it
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"] == labels == pdb["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["selector"] == labels
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "uringserve"}
    assert hpa["spec"]["minReplicas"] >= 2 and pdb["spec"]["maxUnavailable"] == 1  # a drain leaves one serving


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
        (tmp_path / name).write_text(text.replace("/srv/uringserve", str(ROOT)))
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


def container_cmd() -> list[str]:
    """The Containerfile's CMD (a JSON array over continued lines)."""
    with open(os.path.join(DEPLOY, "container", "Containerfile")) as f:
        text = f.read().replace("\\\n", " ")
    (line,) = [line for line in text.splitlines() if line.startswith("CMD ")]
    return json.loads(line[4:])


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """build.sh as the image runs it: (the image's /src, the install prefix).
    Once for the module: the install takes minutes."""
    tmp_path = tmp_path_factory.mktemp("container")
    # the image's /src: the checkout as a fresh clone has it (what git tracks or
    # would, with this tree's edits), without this machine's build products
    src = tmp_path / "src"
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        if os.path.isfile(os.path.join(ROOT, name)):
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(os.path.join(ROOT, name), src / name)
    assert not list(src.rglob("_core*.so"))
    prefix = tmp_path / "opt"
    out = subprocess.run(
        ["sh", os.path.join(DEPLOY, "container", "build.sh")],
        env={**os.environ, "SRC": str(src), "PREFIX": str(prefix), "PYTHON": PYTHON},
        # not in a checkout, as in the image: the script's own import check
        # must find the installed package, not the one in the working directory
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return src, prefix


# the install's own limit is 600 s, the server's start and stop 60 s more (the
# first test to use `installed` waits for it)
@pytest.mark.timeout(720)
def test_the_container_recipe_installs_and_serves(installed: tuple[Path, Path]) -> None:
    """build.sh as the image runs it, then the image's CMD from the installed
    package in the image's WORKDIR (the copied checkout, whose uringserve/
    has no native core built: a worker that imported it from there instead
    of the installed package would fail), on 127.0.0.1 and ports the kernel
    picks: it answers HTTP and its metrics, from the native core installed
    under the prefix, and drains on SIGTERM."""
    src, prefix = installed
    doctor = subprocess.run([str(prefix / "bin" / "uringserve"), "doctor"], capture_output=True, text=True, timeout=60)
    assert doctor.returncode == 0 and "defaults here" in doctor.stdout
    with open(os.path.join(DEPLOY, "container", "Containerfile")) as f:
        recipe = f.read()
    assert "deploy/container/build.sh" in recipe and "USER uringserve" in recipe
    assert 'ENTRYPOINT ["/opt/uringserve/bin/uringserve"]' in recipe

    # the image's CMD, on this machine's loopback and ports the kernel picks
    image_cmd = container_cmd()
    here = {"0.0.0.0": "127.0.0.1", "8000": "0", "0.0.0.0:9464": "127.0.0.1:0"}
    assert all(image_cmd.count(a) == 1 for a in here), image_cmd
    cmd = [here.get(a, a) for a in image_cmd]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    banner = re.compile(r"uringserve on 127\.0\.0\.1:(\d+)\b")  # text or JSON (the CMD's --log-format json)
    srv = Proc([str(prefix / "bin" / "uringserve"), *cmd], env=env, banner=banner, cwd=src)
    try:
        hello = get(srv.port, "/")
        assert (hello.status, hello.body) == (200, b"Hello, world!\n")
        metrics_port = srv.metrics_port()  # the supervisor serves the metrics
        assert get(metrics_port, "/ready").status == 200
        text = get(metrics_port, "/metrics").body
        assert b'uringserve_http_requests_total{code="2xx"} 1.0' in text, text[:2000]
        workers = children(srv.p.pid)
        assert workers
        for pid in workers:  # each worker runs the native core installed under the prefix, not the checkout's
            cores = {line.split()[-1] for line in Path(f"/proc/{pid}/maps").read_text().splitlines() if "_core" in line}
            assert cores and all(c.startswith(str(prefix)) for c in cores), cores
    finally:
        status = srv.stop()
    assert status == 0, srv.output()


@pytest.mark.timeout(720)
def test_the_installed_package_serves_resp_and_echo_outside_a_checkout(
    installed: tuple[Path, Path], tmp_path: Path
) -> None:
    """`uringserve resp` and `uringserve echo` are the installed package's:
    run from an empty directory (no checkout's apps/ to import, no
    PYTHONPATH) they answer PING/SET/GET and echo bytes back, on the native
    core installed under the prefix, and stop cleanly on SIGTERM."""
    _, prefix = installed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    # what the demos used to be imported as is not there to be found
    found = subprocess.run(
        [str(prefix / "bin" / "python"), "-c", "import importlib.util; print(importlib.util.find_spec('apps'))"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert found.stdout == "None\n", found.stdout + found.stderr

    def serve(command: str) -> Proc:
        return Proc([str(prefix / "bin" / "uringserve"), command, "--port", "0"], env=env, cwd=elsewhere)

    srv = serve("resp")
    try:
        replies = talk(srv.port, b"PING\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nwheel\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n")
        assert replies == b"+PONG\r\n+OK\r\n$5\r\nwheel\r\n", replies
        assert_installed_core(srv.p.pid, prefix)
    finally:
        status = srv.stop()
    assert status == 0, srv.output()

    srv = serve("echo")
    try:
        payload = bytes(range(256)) * 64
        assert talk(srv.port, payload) == payload
        assert_installed_core(srv.p.pid, prefix)
    finally:
        status = srv.stop()
    assert status == 0, srv.output()


def talk(port: int, data: bytes) -> bytes:
    """Send `data` on a connection of its own, shut the sending side and read
    until the server closes: every reply, in order."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def assert_installed_core(pid: int, prefix: Path) -> None:
    """The process `pid` (one process: neither command starts workers unless
    told) runs the native core installed under `prefix`."""
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    cores = {line.split()[-1] for line in maps if "_core" in line}
    assert cores and all(c.startswith(str(prefix)) for c in cores), cores


def get(port: int, path: str) -> Resp:
    """GET `path` on a connection of its own, which the server ends after the response."""
    (resp,) = exchange(port, f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode()).responses
    return resp
