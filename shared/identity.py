"""Who is this worker? A stable, unique KerasTuner tuner id per replica.

The oracle hands a tuner id its unfinished trial back, so the id must survive a
re-created container (its hostname does not) and must differ between replicas
(two workers with one id train the same trial in lockstep). Compose numbers
replicas `<project>-<service>-<N>`; Docker's embedded DNS (127.0.0.11) answers
a reverse lookup of the container's own address with that name, so the id is
`worker-<N>` without mounting the Docker socket. A Swarm task's name there is
`<stack>_<service>.<slot>.<task id>.<network>.`: its slot (kept by the task that
replaces a failed one) gives `worker-<slot>` the same way. (The stack file also
passes `KERASTUNER_TUNER_ID: worker-{{.Task.Slot}}`, which comes first.)
"""

from __future__ import annotations

import os
import re
import socket

from shared.config import ConfigError, validate_tuner_id

DOCKER_DNS = "127.0.0.11"
_REPLICA_NAME = re.compile(r"^(?P<service>.+)-(?P<number>\d+)$")
_SWARM_TASK_ID = re.compile(r"^[a-z0-9]{25}$")


def replica_number(ptr_name: str) -> int | None:
    """Replica number from a Compose container DNS name, e.g.
    'proj-worker-3.proj_default.' -> 3; None when the name has no number."""
    first_label = ptr_name.rstrip(".").split(".", 1)[0]
    match = _REPLICA_NAME.match(first_label)
    return int(match["number"]) if match else None


def swarm_slot(ptr_name: str) -> int | None:
    """Slot of a Swarm replicated task from its DNS name, e.g.
    'ktc_worker.3.x5k2...(25 chars).ktc_default.' -> 3; None for any other name
    (a Compose name, a global-mode task, which has a node id in place of a slot)."""
    labels = ptr_name.rstrip(".").split(".")
    if len(labels) < 3 or "_" not in labels[0] or not labels[1].isdigit():
        return None
    if not _SWARM_TASK_ID.match(labels[2]) or int(labels[1]) < 1:
        return None
    return int(labels[1])


def _compose_ptr_name(timeout: float = 2.0) -> str | None:
    """Ask Docker's embedded DNS for this container's own name; None outside Docker."""
    import dns.exception
    import dns.resolver
    import dns.reversename

    try:
        own_ip = socket.gethostbyname(socket.gethostname())
    except OSError:
        return None
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [DOCKER_DNS]
    resolver.lifetime = timeout
    try:
        answer = resolver.resolve(dns.reversename.from_address(own_ip), "PTR")
    except (dns.exception.DNSException, OSError):
        return None
    return str(answer[0])


def worker_id(explicit: str, lookup=_compose_ptr_name, pid: int | None = None) -> str:
    """The tuner id for this worker process.

    Order: the explicit KERASTUNER_TUNER_ID; else `worker-<index + 1>` in a pod of a
    Kubernetes Indexed Job; else `worker-<N>` from the Compose replica number or the
    Swarm task slot in this container's DNS name; else (plain processes outside an
    engine) `worker-<host>-<pid>`.
    """
    if explicit:
        return validate_tuner_id(explicit)
    if (number := kubernetes_replica()) is not None:
        return validate_tuner_id(f"worker-{number}")
    name = lookup()
    number = (swarm_slot(name) or replica_number(name)) if name else None
    if number is not None:
        return validate_tuner_id(f"worker-{number}")
    host = re.sub(r"[^A-Za-z0-9]+", "-", socket.gethostname()).strip("-")[:24] or "host"
    return validate_tuner_id(f"worker-{host}-{pid or os.getpid()}", name="derived worker id")


def kubernetes_replica(environ=os.environ) -> int | None:
    """Replica number of a pod of a Kubernetes Indexed Job: its completion index
    (JOB_COMPLETION_INDEX, 0-based, set by the Job controller and kept by the pod that replaces
    a failed one) plus one, so index 0 is `worker-1` as on Compose and Swarm. None when unset
    (not such a pod). `worker_id` asks it right after KERASTUNER_TUNER_ID.
    Raises ConfigError for a value that is not a non-negative integer."""
    value = environ.get("JOB_COMPLETION_INDEX", "").strip()
    if not value:
        return None
    if not value.isdigit():
        raise ConfigError("JOB_COMPLETION_INDEX", value, "a Job completion index (0, 1, 2, ...)")
    return int(value) + 1


def replica_of(tuner_id: str) -> int | None:
    """The replica number inside a `worker-<N>` id (used to choose a GPU)."""
    match = re.fullmatch(r"worker-(\d+)", tuner_id)
    return int(match[1]) if match else None
