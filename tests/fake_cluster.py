"""A real multi-node autoscaling Ray cluster on this machine, on Ray's fake multi-node node provider
(tests/fake_provider.py: a worker node whose raylet is killed disappears, as a preempted instance does).

The head (`ray start --head`, CPU: 0 as in cluster.yaml) runs the autoscaler monitor with a config of our
own (the 2.60 wheel lacks fake_multi_node/example.yaml); every worker node it starts is its own raylet with
a logical GPU (no CUDA behind it). Everything started lives under this cluster's own --temp-dir: teardown
kills exactly those processes, by pid (never Ray's stop-everything command, which ends every Ray process on
the machine).
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass

import psutil

from tests.helpers import ROOT, free_port

RAY = os.path.join(os.path.dirname(sys.executable), "ray")
HEAD_ID = "f" * 54 + "00000"  # the fake provider's node id of the head
WORKER_TYPE = "gpu_worker"


def config(gcs: str, worker_cpus: int, max_workers: int, idle_timeout_minutes: float) -> dict:
    worker = {"resources": {"CPU": worker_cpus, "GPU": 1}, "node_config": {}, "min_workers": 0,
              "max_workers": max_workers}
    return {
        "cluster_name": "fake_multinode", "max_workers": max_workers,
        "provider": {"type": "external", "module": "tests.fake_provider.PreemptibleFakeProvider",
                     "use_node_id_as_ip": True, "disable_node_updaters": True, "disable_launch_config_check": True,
                     "gcs_address": gcs},
        "available_node_types": {WORKER_TYPE: worker,
                                 "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0}},
        "head_node_type": "ray.head.default", "auth": {}, "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_minutes, "docker": {}, "initialization_commands": [],
        "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [], "file_mounts": {}, "cluster_synced_files": [],
        "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": []}


@dataclass
class FakeCluster:
    address: str  # the dashboard / job submission address
    gcs: str
    env: dict[str, str]
    temp_dir: str
    head: subprocess.Popen

    def nodes(self) -> list[dict]:
        """Alive nodes from the state API: node_id, is_head_node, resources_total, ..."""
        with urllib.request.urlopen(f"{self.address}/api/v0/nodes?detail=1&limit=100", timeout=10) as r:
            nodes = json.load(r)["data"]["result"]["result"]
        return [n for n in nodes if n["state"] == "ALIVE"]

    def gpu_nodes(self) -> int:
        return sum(1 for n in self.nodes() if n["resources_total"].get("GPU", 0))

    def wait(self, what, timeout: float, message: str, job_log: pathlib.Path | None = None):
        """what()'s first true value within timeout; else fail with what the autoscaler and the job said."""
        deadline = time.monotonic() + timeout
        while not (value := what()):
            assert time.monotonic() < deadline, f"{message}\n{self.diagnosis(job_log)}"
            time.sleep(1)
        return value

    def diagnosis(self, job_log: pathlib.Path | None = None) -> str:
        """The autoscaler's status, the end of its monitor log and of the job's output, for a failed wait."""
        status = subprocess.run([RAY, "status", "--address", self.gcs], env=self.env, capture_output=True,
                                text=True, timeout=60)
        monitor = pathlib.Path(self.temp_dir, "session_latest", "logs", "monitor.log")
        parts = {"ray status": status.stdout + status.stderr,
                 "monitor.log (end)": "\n".join(monitor.read_text().splitlines()[-60:]) if monitor.exists() else "",
                 "job output (end)": job_log.read_text()[-6000:] if job_log and job_log.exists() else ""}
        return "\n".join(f"--- {name} ---\n{text}" for name, text in parts.items())

    def processes(self) -> list[psutil.Process]:
        """Every process of this cluster: the head's descendants and whatever runs under its temp dir."""
        found = {}
        try:
            head = psutil.Process(self.head.pid)
            found = {p.pid: p for p in [head, *head.children(recursive=True)]}
        except psutil.NoSuchProcess:
            pass
        for p in psutil.process_iter(["cmdline"]):
            if any(self.temp_dir in a for a in p.info.get("cmdline") or []):
                found.setdefault(p.pid, p)
        return list(found.values())

    def kill_worker_raylet(self, node_id: str) -> int:
        """SIGKILL one worker node's raylet, as a preempted instance; returns its pid."""
        for p in self.processes():
            try:
                args = p.cmdline()
            except psutil.Error:  # gone, or a zombie not yet reaped
                continue
            if args and args[0].endswith("raylet") and f"--node_id={node_id}" in args:
                p.send_signal(signal.SIGKILL)
                return p.pid
        raise AssertionError(f"no raylet for node {node_id}")

    def stop(self) -> None:
        procs = self.processes()
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=30)


def start(worker_cpus: int = 3, max_workers: int = 2, idle_timeout_minutes: float = 0.25) -> FakeCluster:
    temp_dir = tempfile.mkdtemp(prefix="rayf", dir="/tmp")
    # every port of the head its own: Ray's defaults (the dashboard agent's 52365) may be held by another Ray on
    # this machine, such as a test session's local one, and then no job can be submitted
    ports = {name: free_port() for name in ("port", "dashboard-port", "metrics-export-port", "ray-client-server-port",
                                            "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                            "runtime-env-agent-port", "node-manager-port", "object-manager-port")}
    config_path = os.path.join(temp_dir, "autoscaling.json")
    with open(config_path, "w") as f:
        json.dump(config(f"127.0.0.1:{ports['port']}", worker_cpus, max_workers, idle_timeout_minutes), f)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
           # the autoscaler monitor imports tests.fake_provider
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("RAY_ADDRESS", None)
    cmd = [RAY, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1",
           "--num-cpus", "0", "--include-dashboard", "true", "--temp-dir", temp_dir,
           f"--autoscaling-config={config_path}", "--system-config", json.dumps({"metrics_report_interval_ms": 1000}),
           *[f"--{k}={v}" for k, v in ports.items()]]
    head = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    cluster = FakeCluster(f"http://127.0.0.1:{ports['dashboard-port']}", f"127.0.0.1:{ports['port']}", env,
                          temp_dir, head)
    deadline = time.monotonic() + 120
    while True:
        try:
            cluster.nodes()
            return cluster
        except OSError:
            if time.monotonic() > deadline or head.poll() is not None:
                cluster.stop()
                raise RuntimeError("fake cluster head did not start") from None
            time.sleep(0.5)
