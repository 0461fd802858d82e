"""Settings for every ktcluster process, read once from the environment.

This module must not import TensorFlow or KerasTuner: every setting is checked
here, before the heavy imports, so a typo costs one line and exit code 2
instead of a minute of start-up and a half-written state directory.

The table below is the single source of truth for names, defaults and what
each setting means; README.md and `.env` mirror it.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
from typing import Mapping

TUNERS = ("random", "bayesian", "hyperband", "grid")
NO_MODEL = "none"  # KTC_MODEL: no hypermodel (a KTC_TUNER class whose run_trial needs none)
BUILTIN_DATASETS = ("mnist", "digits")
DIRECTIONS = ("min", "max")

#: name -> (default, help). Defaults suit a laptop run from the repo root.
SETTINGS: dict[str, tuple[str, str]] = {
    "KERASTUNER_ORACLE_IP": ("127.0.0.1", "chief: address to bind; worker: chief's address"),
    "KERASTUNER_ORACLE_PORT": ("8000", "oracle gRPC port (1-65535)"),
    "KERASTUNER_TUNER_ID": ("", "worker id; derived from the Compose replica number when unset"),
    "KTC_PROJECT": ("ktcluster", "project name: folder under the state, log and results dirs"),
    "KTC_TUNER": ("random", "search algorithm: " + ", ".join(TUNERS) + ", or module:Class, a subclass of a "
                  "KerasTuner tuner (README: Bring your own model and data)"),
    "KTC_MAX_TRIALS": ("10", "number of trials, 1-1000000 (hyperband: ignored, see KTC_EPOCHS)"),
    "KTC_EPOCHS": ("2", "epochs per trial, 1-100000 (hyperband: max epochs)"),
    "KTC_OBJECTIVE": ("val_accuracy", "metric to optimise, optionally NAME:min or NAME:max"),
    "KTC_DATASET": ("mnist", "mnist, digits, or module:function returning (x, y), (x_val, y_val) or a dict of "
                    "keras.Model.fit keyword arguments (tf.data, PyDataset)"),
    "KTC_MODEL": ("", "module:name, a build_model(hp) function, a keras_tuner.HyperModel or HyperModel subclass; "
                  "empty = the KerasTuner guide's model; none = no model (a KTC_TUNER class's run_trial)"),
    "KTC_CALLBACKS": ("", "module:function returning a list of Keras callbacks, called for every trial attempt; "
                      "empty = none"),
    "KTC_SEED": ("", "random seed of the search algorithm, 0-4294967295 (empty = random)"),
    "KTC_STATE_DIR": ("./run/state", "oracle state and checkpoints (shared by chief and workers)"),
    "KTC_LOG_DIR": ("./run/logs", "TensorBoard root; the project's runs go in DIR/PROJECT"),
    "KTC_DATA_DIR": ("./run/data", "dataset cache (downloaded once, by the chief)"),
    "KTC_RESULTS_DIR": ("./run/results", "trials.csv and best_hyperparameters.json go in DIR/PROJECT"),
    "KTC_GPU_MAP": ("", "worker GPU pinning, e.g. 'worker-1=0,worker-2=1'; unset ids pick by replica"),
    "KTC_TF_THREADS": ("0", "TensorFlow intra/inter-op threads per process (0 = TensorFlow's default)"),
    "KTC_STOP_GRACE_SECONDS": ("30", "chief: how long to wait for known workers to hear STOPPED"),
    "KTC_CHIEF_TIMEOUT_SECONDS": ("300", "worker: how long to ride out an unreachable chief before exiting"),
    "KTC_LEASE_SECONDS": ("60", "a worker silent this long loses its trial to another worker (>= 1)"),
    "KTC_HEARTBEAT_SECONDS": ("5", "worker heartbeat interval, independent of epoch length (>= 0.1, <= lease / 2)"),
    "KTC_MAX_RETRIES": ("1", "extra attempts for a trial that raised or whose worker died"),
    "KTC_MAX_CONSECUTIVE_FAILURES": ("5", "the search stops with an error after this many failed trials in a row"),
    "KTC_FSYNC": ("0", "chief: 1 = fsync every state write (survives power loss, slower); 0 = survives kill -9"),
    "KTC_STORAGE_GRACE_SECONDS": ("300", "chief: how long it waits for a full or failing state disk before exiting 1"),
    "KTC_STOCK_LEASE_SECONDS": ("0", "stock KerasTuner workers (no heartbeat): 0 = refused; N >= 1 = served, "
                                "losing their trial after N s without a call (make it longer than an epoch)"),
    "KTC_TLS_DIR": ("", "folder of PEM files for mutual TLS on the oracle (see README); empty = plaintext"),
    "KTC_METRICS_PORT": ("9464", "chief: Prometheus metrics port (HTTP /metrics on KERASTUNER_ORACLE_IP), 1-65535; "
                         "0 = off"),
}


#: `KTC_*` names that may be in a process's environment without being settings of these
#: processes; any other unknown `KTC_*` name is refused as a probable typo (see `check_names`).
NOT_PROCESS_SETTINGS: dict[str, str] = {
    # Read by Docker Compose itself (compose.yaml, .env); a shell that sources .env exports them.
    "KTC_WORKERS": "compose: number of worker replicas",
    "KTC_TENSORBOARD_PORT": "compose: host port published for TensorBoard",
    "KTC_CODE_DIR": "compose: host folder of the user's code, mounted read-only",
    "KTC_RESULTS_HOST_DIR": "compose: host folder mounted as KTC_RESULTS_DIR",
    "KTC_BASE_IMAGE": "compose: base image of the ktcluster image build",
    "KTC_TENSORFLOW": "compose: TensorFlow requirement of the image build",
    "KTC_IMAGE_TAG": "compose: tag of the ktcluster image",
    "KTC_COMPOSE_PROJECT": "compose: the Compose project name",
    "KTC_IMAGE": "swarm: image repository of stack.yaml (a registry's name on several nodes)",
    "KTC_CHIEF_CONSTRAINT": "swarm: placement constraint of the chief (default node.role == manager)",
    "KTC_SHARE_TYPE": "swarm: stack.shared.yaml: mount type of the shared volumes (default nfs)",
    "KTC_SHARE_OPTIONS": "swarm: stack.shared.yaml: mount options of the shared volumes (addr=...)",
    "KTC_SHARE_DEVICE": "swarm: stack.shared.yaml: the share holding state/, logs/ and data/",
    # Read by the test suite and CI only; they are exported to the processes tests start.
    "KTC_E2E_REQUIRED": "tests: Docker must be usable (.ci/run)",
    "KTC_BROWSER_REQUIRED": "tests: a browser must be usable (.ci/run)",
    "KTC_UPDATE_SCREENSHOTS": "tests: copy the HParams screenshots to docs/img",
    "KTC_FAULT_REPORT": "tests: where test_faults.py writes its figures",
    "KTC_TEST_SLEEP": "tests: seconds per batch of tests/fixtures/models.py's slow model",
}


class ConfigError(ValueError):
    """A setting has a value we cannot run with; `str()` is the one-line message."""

    def __init__(self, name: str, value: str, allowed: str):
        super().__init__(f"{name}={value!r} is not valid: {allowed}")
        self.name = name


class UnknownSettingError(ConfigError):
    """A `KTC_*` variable that is no setting (a typo would otherwise be ignored in silence)."""

    def __init__(self, name: str, closest: str | None):
        hint = f"did you mean {closest}?" if closest else "the settings are listed in README.md"
        ValueError.__init__(self, f"{name} is not a setting; {hint}")
        self.name = name


@dataclasses.dataclass(frozen=True)
class Objective:
    name: str
    direction: str | None  # None: let KerasTuner infer it from the name


@dataclasses.dataclass(frozen=True)
class Settings:
    oracle_ip: str
    oracle_port: int
    tuner_id: str  # "" when the worker derives it (see shared.identity)
    project: str
    tuner: str
    max_trials: int
    epochs: int
    objective: Objective
    dataset: str
    model: str  # "" (the guide's), NO_MODEL or module:name
    seed: int | None
    state_dir: str
    log_dir: str
    data_dir: str
    results_dir: str
    gpu_map: Mapping[str, int]
    tf_threads: int
    stop_grace_seconds: float
    chief_timeout_seconds: float
    lease_seconds: float
    heartbeat_seconds: float
    max_retries: int
    max_consecutive_failures: int
    fsync: bool
    storage_grace_seconds: float
    stock_lease_seconds: float  # 0: stock clients are refused
    tls_dir: str  # "": plaintext
    metrics_port: int = 0  # KTC_METRICS_PORT; 0: no metrics endpoint (chief.metrics)
    callbacks: str = ""  # "" or module:function

    @property
    def oracle_address(self) -> str:
        return f"{self.oracle_ip}:{self.oracle_port}"

    @property
    def project_state_dir(self) -> str:
        return os.path.join(self.state_dir, self.project)

    @property
    def project_log_dir(self) -> str:
        return os.path.join(self.log_dir, self.project)

    @property
    def project_results_dir(self) -> str:
        return os.path.join(self.results_dir, self.project)


MAX_TUNER_ID = 64
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_METRIC = re.compile(r"^[A-Za-z_]\w*$")


_DIGITS = re.compile(r"^[+-]?[0-9]{1,30}$")  # longer is out of every range (and int() may refuse it)
MAX_SECONDS = 7 * 24 * 3600.0  # longer waits can only be mistakes (and overflow thread timeouts)


def _int(env, name, minimum, maximum):
    """An integer within [minimum, maximum]: every int setting has an upper bound, so a
    value that can only be a mistake (or would overflow downstream) is refused here."""
    raw = env[name].strip()
    allowed = f"an integer >= {minimum} and <= {maximum}"
    if not _DIGITS.match(raw) or not minimum <= int(raw) <= maximum:
        raise ConfigError(name, raw, allowed)
    return int(raw)


#: lower bounds of the settings in seconds that have one above 0: a heartbeat every few
#: microseconds, or a lease shorter than a call takes, only floods the chief and fails every trial.
MIN_SECONDS = {"KTC_HEARTBEAT_SECONDS": 0.1, "KTC_LEASE_SECONDS": 1.0, "KTC_STOCK_LEASE_SECONDS": 1.0}


def _seconds(env, name):
    raw = env[name].strip()
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    minimum = MIN_SECONDS.get(name)
    if not (value >= minimum if minimum else value > 0) or not value <= MAX_SECONDS:  # also refuses nan and inf
        low = f">= {minimum:g}" if minimum else "> 0"
        raise ConfigError(name, raw, f"a number of seconds {low} and <= {MAX_SECONDS:.0f} (7 days)")
    return value


def _stock_lease(env):
    if env["KTC_STOCK_LEASE_SECONDS"].strip() in ("0", "0.0"):
        return 0.0
    return _seconds(env, "KTC_STOCK_LEASE_SECONDS")


_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")  # '_' too: Compose service names may hold it


def _address(env):
    """KERASTUNER_ORACLE_IP: a valid IPv4 or IPv6 literal (IPv6 optionally in brackets), or a host
    name (RFC 1123 labels: letters, digits, '-' and '_', at most 63 characters each, 253 in all). A
    dotted string of digits is an IPv4 literal and must be one (256.1.1.1 is refused here, not
    reported later as a busy port)."""
    raw = env["KERASTUNER_ORACLE_IP"].strip()
    allowed = "a host name (letters, digits, '-', '_' and '.') or a valid IPv4 or IPv6 address"
    literal = raw[1:-1] if raw.startswith("[") and raw.endswith("]") else raw
    if ":" in literal or re.fullmatch(r"[0-9.]+", literal):
        try:
            ipaddress.ip_address(literal)
        except ValueError:
            raise ConfigError("KERASTUNER_ORACLE_IP", raw, allowed) from None
        return raw
    name = raw[:-1] if raw.endswith(".") else raw
    if not name or len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        raise ConfigError("KERASTUNER_ORACLE_IP", raw, allowed)
    return raw


def _choice(env, name, allowed):
    raw = env[name].strip()
    if raw not in allowed:
        raise ConfigError(name, raw, "one of " + ", ".join(allowed))
    return raw


def validate_tuner_id(tuner_id: str, name: str = "KERASTUNER_TUNER_ID") -> str:
    """Worker ids must be unique and must not contain 'chief'.

    KerasTuner treats ANY process whose id contains "chief" as the oracle
    (a substring test), which would start a second oracle on the same port.
    """
    if len(tuner_id) > MAX_TUNER_ID:
        raise ConfigError(name, tuner_id[:40] + "...", f"at most {MAX_TUNER_ID} characters")
    if "chief" in tuner_id.lower():
        raise ConfigError(name, tuner_id, "a worker id must not contain 'chief' (KerasTuner would start a second oracle)")
    if not _NAME.fullmatch(tuner_id):
        raise ConfigError(name, tuner_id, "letters, digits, '.', '_' or '-', starting with a letter or digit")
    return tuner_id


def _objective(env):
    raw = env["KTC_OBJECTIVE"].strip()
    name, _, direction = raw.partition(":")
    if not _METRIC.match(name) or (direction and direction not in DIRECTIONS):
        raise ConfigError("KTC_OBJECTIVE", raw, "a metric name such as val_accuracy, optionally with :min or :max")
    return Objective(name, direction or None)


def _gpu_map(env):
    raw = env["KTC_GPU_MAP"].strip()
    mapping = {}
    allowed = "comma-separated WORKER_ID=GPU_INDEX pairs, e.g. worker-1=0,worker-2=1"
    for pair in filter(None, (p.strip() for p in raw.split(","))):
        worker, sep, index = pair.partition("=")
        index = index.strip()
        if not sep or not _NAME.match(worker.strip()) or not re.fullmatch(r"[0-9]{1,4}", index):
            raise ConfigError("KTC_GPU_MAP", raw, allowed)
        mapping[worker.strip()] = int(index)
    return mapping


def _import_path(env, name, builtins=(), what="module:function", empty=False):
    raw = env[name].strip()
    if raw in builtins or (raw == "" and empty) or _IMPORT_PATH.match(raw):
        return raw
    choices = " | ".join((*builtins, what)) + (" (or empty)" if empty else "")
    raise ConfigError(name, raw, choices)


def _directory(env, name, must_write):
    """Create the directory if needed and check we can use it, before any work."""
    path = env[name].strip()
    if not path:
        raise ConfigError(name, path, "a directory path")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise ConfigError(name, path, f"cannot create it ({exc.strerror})") from None
    if not os.path.isdir(path):
        raise ConfigError(name, path, "it exists but is not a directory")
    mode = os.W_OK | os.X_OK if must_write else os.R_OK | os.X_OK
    if not os.access(path, mode):
        raise ConfigError(name, path, "a directory this process can " + ("write" if must_write else "read"))
    return os.path.abspath(path)


#: which directories each role writes (the rest it only reads)
_WRITES = {
    "chief": {"KTC_STATE_DIR", "KTC_LOG_DIR", "KTC_DATA_DIR", "KTC_RESULTS_DIR"},
    "worker": {"KTC_STATE_DIR", "KTC_LOG_DIR"},
}


def check_names(environ: Mapping[str, str]) -> None:
    """Raise UnknownSettingError for the first `KTC_*` name (any case) in `environ` that is
    neither in SETTINGS nor in NOT_PROCESS_SETTINGS, naming the closest setting if any."""
    known = [name for name in SETTINGS if name.startswith("KTC_")]
    for name in sorted(environ):
        if name.upper().startswith("KTC_") and name not in SETTINGS and name not in NOT_PROCESS_SETTINGS:
            closest = difflib.get_close_matches(name.upper(), known, n=1, cutoff=0.6)
            raise UnknownSettingError(name, closest[0] if closest else None)


def load(environ: Mapping[str, str] | None = None, role: str = "worker") -> Settings:
    """Parse and validate every setting of `environ` (default: os.environ).

    Raises ConfigError naming the first bad one: an unknown `KTC_*` name first
    (UnknownSettingError), then a bad value. Creates the role's directories only
    when every other value is good.
    """
    environ = os.environ if environ is None else environ
    check_names(environ)
    env = {name: default for name, (default, _) in SETTINGS.items()}
    env.update({k: v for k, v in environ.items() if k in SETTINGS})

    ip = _address(env)
    project = env["KTC_PROJECT"].strip()
    if not _NAME.match(project):
        raise ConfigError("KTC_PROJECT", project, "letters, digits, '.', '_' or '-', starting with a letter or digit")
    tuner_id = env["KERASTUNER_TUNER_ID"].strip()
    if tuner_id and role == "worker":
        validate_tuner_id(tuner_id)
    seed = env["KTC_SEED"].strip()
    scalars = dict(
        oracle_ip=ip,
        oracle_port=_int(env, "KERASTUNER_ORACLE_PORT", 1, 65535),
        tuner_id=tuner_id,
        project=project,
        tuner=_import_path(env, "KTC_TUNER", TUNERS, what="module:Class"),
        max_trials=_int(env, "KTC_MAX_TRIALS", 1, 1_000_000),
        epochs=_int(env, "KTC_EPOCHS", 1, 100_000),
        objective=_objective(env),
        dataset=_import_path(env, "KTC_DATASET", BUILTIN_DATASETS),
        model=_import_path(env, "KTC_MODEL", (NO_MODEL,), what="module:name", empty=True),
        callbacks=_import_path(env, "KTC_CALLBACKS", empty=True),
        seed=_int({"KTC_SEED": seed}, "KTC_SEED", 0, 2**32 - 1) if seed else None,
        gpu_map=_gpu_map(env),
        tf_threads=_int(env, "KTC_TF_THREADS", 0, 1024),
        stop_grace_seconds=_seconds(env, "KTC_STOP_GRACE_SECONDS"),
        chief_timeout_seconds=_seconds(env, "KTC_CHIEF_TIMEOUT_SECONDS"),
        lease_seconds=_seconds(env, "KTC_LEASE_SECONDS"),
        heartbeat_seconds=_seconds(env, "KTC_HEARTBEAT_SECONDS"),
        max_retries=_int(env, "KTC_MAX_RETRIES", 0, 100),
        max_consecutive_failures=_int(env, "KTC_MAX_CONSECUTIVE_FAILURES", 1, 1_000_000),
        fsync=_choice(env, "KTC_FSYNC", ("0", "1")) == "1",
        storage_grace_seconds=_seconds(env, "KTC_STORAGE_GRACE_SECONDS"),
        stock_lease_seconds=_stock_lease(env),
        tls_dir=env["KTC_TLS_DIR"].strip(),
        metrics_port=_int(env, "KTC_METRICS_PORT", 0, 65535),
    )
    if scalars["heartbeat_seconds"] * 2 > scalars["lease_seconds"]:
        raise ConfigError("KTC_HEARTBEAT_SECONDS", env["KTC_HEARTBEAT_SECONDS"].strip(),
                          f"at most half of KTC_LEASE_SECONDS ({scalars['lease_seconds']:g})")
    if scalars["metrics_port"] == scalars["oracle_port"]:
        raise ConfigError("KTC_METRICS_PORT", env["KTC_METRICS_PORT"].strip(),
                          f"a port other than KERASTUNER_ORACLE_PORT ({scalars['oracle_port']}), or 0 for no metrics")
    # Directories last: nothing is created on disk unless every other value is good.
    writes = _WRITES.get(role, set())
    dirs = {}
    for name in ("KTC_STATE_DIR", "KTC_LOG_DIR", "KTC_DATA_DIR", "KTC_RESULTS_DIR"):
        used = role in _WRITES and (name != "KTC_RESULTS_DIR" or role == "chief")
        dirs[name.removeprefix("KTC_").lower()] = (
            _directory(env, name, must_write=name in writes) if used else env[name].strip()
        )
    return Settings(**scalars, **dirs)


def settings_table() -> str:
    """Markdown table of every setting, for README.md (kept in sync by a test)."""
    rows = ["| setting | default | meaning |", "|---|---|---|"]
    rows += [f"| `{n}` | {f'`{d}`' if d else '(empty)'} | {h} |" for n, (d, h) in SETTINGS.items()]
    return "\n".join(rows)
