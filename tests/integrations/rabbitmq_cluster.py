"""A two-node RabbitMQ cluster on loopback for tests, configured by `fleet export rabbitmq`.

Each node has its own name (fleet-a@localhost, fleet-b@localhost), MQTT TLS port, management
port, Erlang distribution port and directories; both share a private cookie (HOME) and an
epmd of their own (ERL_EPMD_PORT, on 127.0.0.1). Erlang distribution, the CLI tools' too, is
bound to 127.0.0.1. The Debian wrappers in /usr/sbin switch to the rabbitmq user and its home,
so the scripts they wrap (/usr/lib/rabbitmq/bin) are run instead, as the test's own user.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
LOOPBACK = ("127.0.0.1", "[::1]")
ERL_ARGS = "-kernel inet_dist_use_interface {127,0,0,1}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def scripts(server: str) -> Path:
    """The directory of rabbitmq-server and rabbitmqctl themselves (not Debian's wrappers)."""
    return RABBITMQ_BIN if (RABBITMQ_BIN / "rabbitmq-server").exists() else Path(server).parent


@dataclass
class Node:
    name: str
    config: Path
    """The directory `fleet export rabbitmq` wrote for this node."""
    mqtt_port: int
    management_port: int
    env: dict[str, str]
    bin: Path
    process: subprocess.Popen[bytes] | None = None
    pid_file: Path = field(init=False)

    def __post_init__(self) -> None:
        self.pid_file = Path(self.env["RABBITMQ_PID_FILE"])

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.management_port}"

    def ctl(self, *args: str, timeout: float = 120) -> str:
        done = subprocess.run([str(self.bin / "rabbitmqctl"), "-n", self.name, *args],
                              env=self.env, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise AssertionError(f"rabbitmqctl {' '.join(args)} on {self.name}: "
                                 f"{done.stdout}{done.stderr}")
        return done.stdout

    def start(self, log: Path) -> None:
        with log.open("wb") as output:
            self.process = subprocess.Popen([str(self.bin / "rabbitmq-server")], env=self.env,
                                            stdout=output, stderr=subprocess.STDOUT,
                                            cwd=self.env["RABBITMQ_LOG_BASE"])

    def wait(self) -> None:
        """Until the node runs (fails at once when it exits instead)."""
        assert self.process is not None
        deadline = time.monotonic() + 120
        while not self.pid_file.exists():
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.process.returncode}; "
                                     f"see {self.env['RABBITMQ_LOG_BASE']}")
            assert time.monotonic() < deadline, f"{self.name} wrote no pid file"
            time.sleep(0.1)
        self.ctl("wait", str(self.pid_file), "--timeout", "120", timeout=150)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            self.ctl("stop", timeout=60)
            self.process.wait(60)
        except (AssertionError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait(10)

    def beam_pid(self) -> int:
        return int(self.pid_file.read_text().strip())


@dataclass
class Cluster:
    nodes: tuple[Node, Node]
    epmd: subprocess.Popen[bytes]

    def pids(self) -> set[int]:
        return {self.epmd.pid, *(node.beam_pid() for node in self.nodes)}


def node_env(work: Path, name: str, *, epmd_port: int, config: Path) -> dict[str, str]:
    base = work / name.split("@")[0]
    for sub in ("mnesia", "log"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    ctl_ports = free_port()
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))},
        "HOME": str(work / "home"),  # the cookie: $HOME/.erlang.cookie
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "ERL_EPMD_PORT": str(epmd_port),
        "RABBITMQ_NODENAME": name,
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(free_port()),
        "RABBITMQ_DIST_PORT": str(free_port()),
        "RABBITMQ_CONFIG_FILE": str(config / "rabbitmq.conf"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(config / "advanced.config"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(config / "enabled_plugins"),
        "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
        "RABBITMQ_LOG_BASE": str(base / "log"),
        "RABBITMQ_PID_FILE": str(base / "pid"),
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": ERL_ARGS,
        "RABBITMQ_CTL_ERL_ARGS": ERL_ARGS,
        "RABBITMQ_CTL_DIST_PORT_MIN": str(ctl_ports),
        "RABBITMQ_CTL_DIST_PORT_MAX": str(ctl_ports + 10),
    }


@contextmanager
def running_cluster(work: Path, configs: tuple[tuple[Path, int, int], tuple[Path, int, int]],
                    *, server: str, epmd: str) -> Iterator[Cluster]:
    """Start two nodes (each from an exported directory, its MQTT port and management port),
    join the second to the first; stop both and the epmd at the end."""
    home = work / "home"
    home.mkdir(parents=True, exist_ok=True)
    cookie = home / ".erlang.cookie"
    cookie.write_text(secrets.token_hex(20))
    cookie.chmod(0o400)
    epmd_port = free_port()
    bin_dir = scripts(server)
    with ExitStack() as stack:
        daemon = subprocess.Popen([epmd, "-address", "127.0.0.1", "-port", str(epmd_port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stack.callback(_end, daemon)
        nodes = tuple(
            Node(name=name, config=config, mqtt_port=mqtt, management_port=management,
                 env=node_env(work, name, epmd_port=epmd_port, config=config), bin=bin_dir)
            for name, (config, mqtt, management) in zip(
                ("fleet-a@localhost", "fleet-b@localhost"), configs, strict=True))
        first, second = nodes
        for node in nodes:
            stack.callback(node.stop)
            node.start(work / f"{node.name.split('@')[0]}.out")
        for node in nodes:
            node.wait()
        second.ctl("stop_app")
        second.ctl("join_cluster", first.name)
        second.ctl("start_app")
        second.ctl("await_startup", "--timeout", "120", timeout=150)
        running = re.findall(r"fleet-[ab]@localhost",
                             first.ctl("cluster_status").split("Running Nodes")[1]
                             .split("Versions")[0])
        assert sorted(set(running)) == ["fleet-a@localhost", "fleet-b@localhost"], running
        for node in nodes:
            wait_listening(node.mqtt_port)
        yield Cluster(nodes=(first, second), epmd=daemon)


def wait_listening(port: int, *, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def listening(pids: set[int]) -> list[tuple[int, str]]:
    """(pid, local address) of every TCP socket the processes *pids* listen on (ss -ltnp)."""
    lines = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, timeout=30,
                           check=True).stdout.splitlines()
    found = []
    for line in lines:
        columns = line.split()
        for pid in map(int, re.findall(r"pid=(\d+)", line)):
            if pid in pids:
                found.append((pid, columns[3]))
    return found


def _end(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
