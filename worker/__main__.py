"""`python -m worker`: ask the chief for trials and train them until told to stop.

Exit codes: 0 search over, 1 runtime failure (chief unreachable, data missing),
2 bad setting (one line naming it).
"""

from __future__ import annotations

import logging
import sys

from shared import config as config_module
from shared.config import ConfigError

log = logging.getLogger("ktcluster.worker")


def _fail(code: int, message: str) -> int:
    print(f"ktcluster worker: {message}", file=sys.stderr, flush=True)
    return code


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    try:
        settings = config_module.load(role="worker")
        from shared.identity import replica_of, worker_id

        tuner_id = worker_id(settings.tuner_id)
    except ConfigError as exc:
        return _fail(2, str(exc))

    from shared import data, devices, hypermodels
    from shared.data import DataError
    from shared.loader import ImportFromStringError
    from worker.client import ChiefUnreachable

    devices.configure_tensorflow(settings.tf_threads)
    try:
        device = devices.use_device(tuner_id, replica_of(tuner_id), settings.gpu_map)
    except ValueError as exc:
        return _fail(2, str(exc))
    log.info("%s: chief %s, device %s", tuner_id, settings.oracle_address, device)

    from worker import runner

    try:
        dataset = data.load(settings.dataset, settings.data_dir)
        build_model = hypermodels.resolve(settings.model, dataset)
        runner.run(settings, tuner_id, device, dataset, build_model)
    except (ConfigError, ImportFromStringError) as exc:
        return _fail(2, str(exc))
    except (DataError, ChiefUnreachable) as exc:
        return _fail(1, f"{tuner_id}: {exc}")
    log.info("%s: no trials left, exiting", tuner_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
