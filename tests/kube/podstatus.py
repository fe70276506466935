"""The pod status a kubelet reports, from what the fake kubelet knows (a pure function)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ContainerFacts", "pod_status", "terminated"]


@dataclass(frozen=True)
class ContainerFacts:
    uid: str
    ip: str
    host_ip: str  # the node's address (the pod network's gateway)
    phase: str  # Pending, Running, Succeeded, Failed
    message: str  # why the pod failed or waits
    name: str  # the container's
    image: str
    running: bool
    ready: bool
    restarts: int
    started: str  # the pod's start (RFC 3339)
    container_started: str
    ready_since: str  # when Ready last changed
    last_exit: tuple[int, str, str] | None  # Popen code, started, finished
    backing_off: bool  # exited, restart pending


def terminated(code: int, started: str, finished: str) -> dict[str, Any]:
    """A containerStatus `terminated` state; killed by signal N reads 128 + N, as runtimes say."""
    return {
        "exitCode": 128 - code if code < 0 else code,
        "reason": "Completed" if code == 0 else "Error",
        "startedAt": started,
        "finishedAt": finished,
    }


def pod_status(f: ContainerFacts) -> dict[str, Any]:
    if f.running:
        state: dict[str, Any] = {"running": {"startedAt": f.container_started}}
    elif f.backing_off:
        state = {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off restarting"}}
    elif f.last_exit is not None:
        state = {"terminated": terminated(*f.last_exit)}
    else:
        state = {"waiting": {"reason": "ContainerCreating", "message": f.message}}
    last_state: dict[str, Any] = {}
    if f.last_exit is not None and (f.running or f.backing_off):
        last_state = {"terminated": terminated(*f.last_exit)}
    ready = "True" if f.ready and f.running else "False"
    status: dict[str, Any] = {
        "phase": f.phase,
        "hostIP": f.host_ip,
        "podIP": f.ip,
        "podIPs": [{"ip": f.ip}],
        "startTime": f.started,
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": f.started},
            {"type": "Initialized", "status": "True", "lastTransitionTime": f.started},
            {"type": "ContainersReady", "status": ready, "lastTransitionTime": f.ready_since},
            {"type": "Ready", "status": ready, "lastTransitionTime": f.ready_since},
        ],
        "containerStatuses": [
            {
                "name": f.name,
                "image": f.image,
                "imageID": "",
                "containerID": f"fake://{f.uid}/{f.restarts}",
                "ready": ready == "True",
                "started": f.running,
                "restartCount": f.restarts,
                "state": state,
                "lastState": last_state,
            }
        ],
    }
    if f.phase == "Failed" and f.message:
        status["message"], status["reason"] = f.message, "FakeKubelet"
    return status
