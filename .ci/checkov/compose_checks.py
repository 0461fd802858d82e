"""ktcluster's own checkov checks for Compose and Swarm stack files (checkov has no policies for
that format): loaded by .ci/policy-scan.sh through --external-checks-dir. Each check looks at a
file's top-level `services` and fails naming the service."""

from checkov.common.models.enums import CheckCategories, CheckResult
from checkov.yaml_doc.base_yaml_check import BaseYamlCheck
from checkov.yaml_doc.enums import BlockType

DOCKER_SOCKET = "/var/run/docker.sock"


def _services(conf):
    return {name: svc for name, svc in (conf or {}).items() if not name.startswith("__") and isinstance(svc, dict)}


class ComposeServicesUnprivileged(BaseYamlCheck):
    """No service is privileged, adds capabilities, shares the host's network, PID or IPC
    namespace, or mounts the Docker socket."""

    def __init__(self):
        super().__init__(name="Compose/stack services run unprivileged (no privileged, cap_add, host namespaces, "
                              "Docker socket)", id="CKV_KTC_1", categories=[CheckCategories.GENERAL_SECURITY],
                         supported_entities=["services"], block_type=BlockType.OBJECT)

    def scan_entity_conf(self, conf, entity_type):
        for name, svc in _services(conf).items():
            volumes = [v if isinstance(v, str) else str(v.get("source", "")) for v in svc.get("volumes", [])]
            if (svc.get("privileged") or svc.get("cap_add")
                    or "host" in (svc.get("network_mode"), svc.get("pid"), svc.get("ipc"))
                    or any(DOCKER_SOCKET in v for v in volumes)):
                self.details.append(f"service {name}")
                return CheckResult.FAILED
        return CheckResult.PASSED


class ComposeOracleNotPublished(BaseYamlCheck):
    """The chief's oracle port is never published: only the cluster's own network reaches it."""

    def __init__(self):
        super().__init__(name="Compose/stack: the chief (oracle) publishes no port", id="CKV_KTC_2",
                         categories=[CheckCategories.NETWORKING], supported_entities=["services"],
                         block_type=BlockType.OBJECT)

    def scan_entity_conf(self, conf, entity_type):
        chief = _services(conf).get("chief", {})
        return CheckResult.FAILED if chief.get("ports") or chief.get("network_mode") == "host" else CheckResult.PASSED


class ComposePortsBoundToLoopback(BaseYamlCheck):
    """A port published in Compose's short syntax names its host address (127.0.0.1 by default
    here), so nothing listens on every interface by accident. Long syntax (Swarm stacks, where a
    host address is ignored) must say its `mode` explicitly; the README says who can reach it."""

    def __init__(self):
        super().__init__(name="Compose/stack: published ports name their host address or mode", id="CKV_KTC_3",
                         categories=[CheckCategories.NETWORKING], supported_entities=["services"],
                         block_type=BlockType.OBJECT)

    def scan_entity_conf(self, conf, entity_type):
        for name, svc in _services(conf).items():
            for port in svc.get("ports", []):
                if isinstance(port, dict):
                    explicit = port.get("host_ip") or port.get("mode")
                else:
                    explicit = str(port).startswith("127.0.0.1:")
                if not explicit:
                    self.details.append(f"service {name}: {port}")
                    return CheckResult.FAILED
        return CheckResult.PASSED


ComposeServicesUnprivileged()
ComposeOracleNotPublished()
ComposePortsBoundToLoopback()
