"""The HParams dashboard of a real ktcluster run, in headless Chromium (Debian's chromium and chromedriver).

The guide's search (MLP or CNN, scikit-learn digits) on two workers, with a worker killed
mid-trial (its trial is retried on the other) and a trial that fails (3-layer MLPs raise in
fit: tests/browser/guide_model.py). On first opening of the HParams tab, untouched, the test
counts what the dashboard shows against the trials: the table's rows, the parallel-coordinates
lines and the scatter-plot points, and takes the three pictures the README and docs/hparams.md
show. `KTC_UPDATE_SCREENSHOTS=1` also copies them to docs/img/.
"""

import csv
import os
import shutil
import signal
import sys
import time

import pytest

from tests.conftest import ROOT
from tests.procs import cluster_env, free_port, hparams_session_groups, processes, python, wait_until

TRIALS = 10
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SHOTS = {"TABLE VIEW": "hparams-table.png", "PARALLEL COORDINATES VIEW": "hparams-parallel-coordinates.png",
         "SCATTER PLOT MATRIX VIEW": "hparams-scatter-matrix.png"}
# What the dashboard must show on first opening: ktcluster's columns and the guide's two
# hyperparameters that every trial has, and the objective first among the metrics.
DEFAULT_HPARAMS = {"status", "error", "worker", "model_type", "dropout"}
OBJECTIVE = {"group": "validation", "tag": "epoch_accuracy"}

# TensorBoard's dashboard is Polymer: everything sits in nested shadow roots.
DEEP = """
function* walk(root) {
  for (const el of root.querySelectorAll('*')) { yield el; if (el.shadowRoot) yield* walk(el.shadowRoot); }
}
function find(tag) { for (const el of walk(document)) { if (el.tagName === tag) return el; } return null; }
"""
CLICK = DEEP + """
const [tag, text] = arguments;
for (const el of walk(document)) {
  if (el.tagName === tag && (el.innerText || el.textContent || '').trim().toUpperCase() === text.toUpperCase()) {
    el.click(); return true;
  }
}
return false;
"""
# The table as the dashboard renders it: its rows (session groups) and visible columns.
TABLE = DEEP + """
const table = find('TF-HPARAMS-TABLE-VIEW');
if (!table || !table.sessionGroups || !table.visibleSchema) return null;
return {rows: table.sessionGroups.map(g => ({name: g.name, hparams: g.hparams,
                                              metrics: g.metricValues.map(m => m.name)})),
        hparams: table.visibleSchema.hparamInfos.map(h => h.name),
        metrics: table.visibleSchema.metricInfos.map(m => m.name),
        text: (table.shadowRoot || table).textContent};
"""
TEXT = DEEP + """
let s = '';
for (const el of walk(document)) { if (el.shadowRoot) s += ' ' + el.shadowRoot.textContent; }
return document.body.innerText + ' ' + s;
"""
COUNT = DEEP + """
const [host, selector] = arguments;
let n = 0;
for (const el of walk(document)) {
  if (el.tagName === host.toUpperCase()) {
    for (const inner of walk(el.shadowRoot || el)) { if (inner.matches(selector)) n++; }
  }
}
return n;
"""


def _require_browser():
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        if os.environ.get("KTC_BROWSER_REQUIRED") == "1":
            pytest.fail("chromium and chromium-driver are required here (apt-get install chromium chromium-driver)")
        pytest.skip("Debian's chromium and chromium-driver are not installed")


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1920,1150", "--hide-scrollbars"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def _started(chief, worker):
    """The trial the chief last handed to `worker`, from its log."""
    for line in reversed(chief.output().splitlines()):
        if f" -> {worker} (attempt" in line:
            return line.split("trial ", 1)[1].split(" ", 1)[0]
    return None


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    _require_browser()  # before the search: a machine without Chromium should not train first
    tmp = tmp_path_factory.mktemp("browser")
    env = cluster_env(tmp, free_port(), KTC_MAX_TRIALS=TRIALS, KTC_EPOCHS=2, KTC_SEED=7, KTC_PROJECT="guide",
                      KTC_MODEL="tests.browser.guide_model:build_model", KTC_MAX_RETRIES=1,
                      KTC_LEASE_SECONDS=6, KTC_HEARTBEAT_SECONDS=1, KTC_STOP_GRACE_SECONDS=3)
    logs = tmp / "logs" / "guide"
    tb_port = free_port()
    with processes() as start:
        chief = start("chief", python("chief"), env, tmp)
        victim = start("w1", python("worker"), {**env, "KERASTUNER_TUNER_ID": "worker-1", "KTC_TEST_SLEEP": "0.05"},
                       tmp)
        survivor = start("w2", python("worker"), {**env, "KERASTUNER_TUNER_ID": "worker-2"}, tmp)
        killed = wait_until(lambda: _started(chief, "worker-1"), 180, 0.1, what="worker-1 to start a trial")
        # after its first epoch (a curve to show), before its second: a dead attempt with data
        wait_until(lambda: list((logs / killed / "execution0" / "validation").glob("events.*")), 120, 0.1,
                   what=f"trial {killed}'s first epoch on worker-1")
        os.kill(victim.pid, signal.SIGKILL)
        assert chief.wait(timeout=600) == 0, chief.output()[-3000:]
        assert survivor.wait(timeout=60) == 0
        start("tensorboard", [os.path.join(os.path.dirname(sys.executable), "tensorboard"), "--logdir",
                              str(logs), "--port", str(tb_port), "--host", "127.0.0.1"], env, tmp)
        base = f"http://127.0.0.1:{tb_port}"
        trials = list(csv.DictReader(open(tmp / "results" / "guide" / "trials.csv")))
        wait_until(_loaded(base, trials), 90, what="TensorBoard to load every trial")
        driver = _browser()
        try:
            yield {"driver": driver, "base": base, "tmp": tmp, "trials": trials, "killed": killed}
        finally:
            driver.quit()


def _expected_rows(trials):
    """Row names: a completed trial's id; every other attempt its own `<id> attempt <k>` row."""
    rows = set()
    for t in trials:
        attempts = int(t["attempts"])
        completed = t["status"] == "COMPLETED"
        rows |= {t["trial_id"]} if completed else set()
        rows |= {f"{t['trial_id']} attempt {k}" for k in range(1, attempts + (0 if completed else 1))}
    return rows


def _loaded(base, trials, settle=3.0):
    """A predicate: every trial has a row and the rows have not changed for `settle` seconds."""
    seen = {"names": None, "since": 0.0}

    def loaded():
        try:
            names = {g["name"] for g in hparams_session_groups(base)}
        except OSError:
            return False
        if names != seen["names"]:
            seen.update(names=names, since=time.monotonic())
        return {n.split()[0] for n in names} >= {t["trial_id"] for t in trials} and (
            time.monotonic() - seen["since"] >= settle)

    return loaded


def _shoot(driver, tmp, name):
    path = tmp / name
    driver.save_screenshot(str(path))
    if os.environ.get("KTC_UPDATE_SCREENSHOTS") == "1":
        shutil.copy(path, os.path.join(ROOT, "docs", "img", name))
    return path


def test_the_run_has_a_retried_and_a_failed_trial(dashboard):
    by_id = {t["trial_id"]: t for t in dashboard["trials"]}
    assert len(by_id) == TRIALS
    retried = by_id[dashboard["killed"]]
    assert (retried["status"], retried["worker"], retried["attempts"]) == ("COMPLETED", "worker-2", "2")
    failed = [t for t in by_id.values() if t["status"] == "FAILED"]
    assert failed and all("3-layer MLPs are refused" in t["message"] for t in failed)
    assert {t["model_type"] for t in by_id.values() if t["status"] == "COMPLETED"} == {"mlp", "cnn"}


def test_first_opening_shows_every_trial_who_ran_it_and_why_it_failed(dashboard):
    """Items 1-3, untouched dashboard: default columns, one row per attempt, the result's row
    from the attempt that produced it, failures with their reason; every completed trial (MLP
    and CNN) is a parallel-coordinates line and a point in each scatter plot."""
    driver, base, tmp, trials = dashboard["driver"], dashboard["base"], dashboard["tmp"], dashboard["trials"]
    driver.get(f"{base}/#hparams")
    wait_until(lambda: "TABLE VIEW" in driver.execute_script(TEXT).upper(), 60, what="the HParams dashboard")
    served = len(hparams_session_groups(base))
    table = wait_until(lambda: (lambda t: t if t and len(t["rows"]) == served else None)(
        driver.execute_script(TABLE)), 60, what="the table to list every session group")
    assert set(table["hparams"]) == DEFAULT_HPARAMS and table["metrics"][0] == OBJECTIVE  # item 1
    expected = _expected_rows(trials)
    assert sorted(r["name"] for r in table["rows"]) == sorted(expected)  # items 2 and 3: one row per attempt
    rows = {r["name"]: r for r in table["rows"]}
    by_id = {t["trial_id"]: t for t in trials}
    for trial_id, t in by_id.items():  # item 2: the result's worker is the attempt's that produced it
        if t["status"] == "COMPLETED":
            assert rows[trial_id]["hparams"]["worker"] == t["worker"]
            assert rows[trial_id]["hparams"]["status"] == "completed"
    dead = rows[f"{dashboard['killed']} attempt 1"]["hparams"]
    assert (dead["worker"], dead["status"]) == ("worker-1", "lost")
    assert dead["error"].startswith(("LeaseExpired", "no result"))  # the chief says why; else the next attempt
    failed = [r["hparams"] for name, r in rows.items() if by_id[name.split()[0]]["status"] == "FAILED"]
    assert failed and all((h["status"], h["error"]) == ("failed", "ValueError: test fault: 3-layer MLPs are refused")
                          for h in failed)
    for text in ("lost", "failed", "3-layer MLPs are refused", "worker-1", "worker-2", "mlp", "cnn"):
        assert text in table["text"], text  # rendered in the table, not only in its data
    time.sleep(1)  # let the columns settle before the picture
    assert _shoot(driver, tmp, SHOTS["TABLE VIEW"]).stat().st_size > 20_000

    # Drawn: a line per row with a value in every visible column; each completed trial is one.
    visible = [("hparam", h) for h in table["hparams"]] + [("metric", m) for m in table["metrics"]]

    def has(row, column):
        kind, name = column
        return name in row["hparams"] if kind == "hparam" else name in row["metrics"]

    lines = [r["name"] for r in table["rows"] if all(has(r, c) for c in visible)]
    assert {t["trial_id"] for t in trials if t["status"] == "COMPLETED"} <= set(lines)
    assert driver.execute_script(CLICK, "PAPER-TAB", "PARALLEL COORDINATES VIEW")
    wait_until(lambda: driver.execute_script(COUNT, "tf-hparams-parallel-coords-plot", "g.foreground path")
               == len(lines), 30, what=f"{len(lines)} lines in the parallel coordinates")
    time.sleep(1)  # the tab indicator slides
    _shoot(driver, tmp, SHOTS["PARALLEL COORDINATES VIEW"])
    assert driver.execute_script(COUNT, "tf-hparams-parallel-coords-plot", "g.foreground path") == len(lines)

    # A scatter cell per (visible column, visible metric), a point per row with both values.
    points = sum(1 for column in visible for metric in table["metrics"] for r in table["rows"]
                 if has(r, column) and metric in r["metrics"])
    assert driver.execute_script(CLICK, "PAPER-TAB", "SCATTER PLOT MATRIX VIEW")
    wait_until(lambda: driver.execute_script(COUNT, "tf-hparams-scatter-plot-matrix-plot", "circle.data-marker")
               == points, 30, what=f"{points} points in the scatter plot matrix")
    time.sleep(1)
    _shoot(driver, tmp, SHOTS["SCATTER PLOT MATRIX VIEW"])
