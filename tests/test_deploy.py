"""deploy/: the systemd units, the Kubernetes manifests and the Dockerfile agree with squall.

Every command line in them must parse with squall's own parser, and the
timeouts must fit together: a stop that kills before `--graceful-timeout`
cuts requests squall would have finished.
"""

from __future__ import annotations

import configparser
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from squall.cli import parse_config
from squall.config import Config
from tests.service import ROOT

DEPLOY = ROOT / "deploy"


def squall_config(argv: list[str]) -> Config:
    """The Config a `squall ...` command line in these files would run with."""
    assert Path(argv[0]).name == "squall", argv
    return parse_config(argv[1:])


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(DEPLOY / "systemd" / name)
    return parser


def test_the_systemd_service_unit() -> None:
    service = unit("squall.service")["Service"]
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["KillSignal"] == "SIGTERM"
    assert service["KillMode"] == "mixed"  # SIGTERM to the supervisor only
    config = squall_config(shlex.split(service["ExecStart"]))
    assert config.workers == 0
    assert config.bind == ["0.0.0.0:8000"]  # its own sockets, one per worker
    assert not config.user  # systemd starts it as the user, with the capabilities steering needs
    assert service["User"] == "squall"
    assert int(service["FileDescriptorStoreMax"]) > 0  # restarts keep the sockets
    for setting in ("AmbientCapabilities", "CapabilityBoundingSet"):
        assert set(service[setting].split()) == {"CAP_BPF", "CAP_NET_BIND_SERVICE"}
    assert int(service["TimeoutStopSec"]) > config.graceful_timeout
    assert int(service["WatchdogSec"]) >= 2
    assert service["Environment"] == "SQUALL_CONTROL=/run/squall/control.sock"
    assert service["RuntimeDirectory"] == "squall"


def test_the_systemd_socket_unit() -> None:
    socket_unit = unit("squall.socket")["Socket"]
    assert socket_unit["ListenStream"] == "0.0.0.0:8000"
    assert socket_unit.get("Accept", "no") == "no"  # one socket for every worker


def test_the_dockerfile() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.findall(r"^FROM (\S+)", text, re.MULTILINE) == ["python:3.11-slim"]
    assert "pip install ." in text
    # setup.py compiles the request path; gcc is there while it does.
    assert re.search(r"^COPY .*\bsetup\.py\b", text, re.MULTILINE), "setup.py is not copied"
    assert "install -y --no-install-recommends gcc" in text
    user = re.search(r"^USER (\S+)", text, re.MULTILINE)
    assert user is not None and not user.group(1).startswith(("root", "0"))
    cmd = re.search(r"^CMD (\[.*\])$", text, re.MULTILINE)
    assert cmd is not None
    config = squall_config(json.loads(cmd.group(1)))
    assert config.bind == ["0.0.0.0:8000"] and config.metrics == "0.0.0.0:9000"


def kubernetes(name: str) -> Any:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load((DEPLOY / "kubernetes" / name).read_text())


def test_the_kubernetes_deployment_drains_within_its_grace_period() -> None:
    deployment = kubernetes("deployment.yaml")
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    config = squall_config(container["command"])
    assert config.bind == ["0.0.0.0:8000"] and config.metrics == "0.0.0.0:9000"
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": 8000, "metrics": 9000}

    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    sleep = container["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    pre_stop = float(sleep[1])
    assert pre_stop >= 5
    assert spec["terminationGracePeriodSeconds"] > pre_stop + config.graceful_timeout

    assert spec["securityContext"]["runAsNonRoot"] is True
    mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
    control = {e["name"]: e["value"] for e in container["env"]}["SQUALL_CONTROL"]
    assert str(Path(control).parent) in mounts  # writable with a read-only root filesystem


def test_the_kubernetes_service_selects_the_pods() -> None:
    deployment = kubernetes("deployment.yaml")
    service = kubernetes("service.yaml")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "http"
