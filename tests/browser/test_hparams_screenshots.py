"""TensorBoard's dashboards for a real ktcluster run, in headless Chromium (Debian's chromium and chromedriver).

The guide's search (MLP or CNN, scikit-learn digits) on two workers, with a worker killed
mid-trial (its trial is retried on the other) and a trial that fails (3-layer MLPs raise in
fit: tests/browser/guide_model.py). On first opening of each tab, untouched unless said, the
test counts what TensorBoard shows against the trials: HParams' table rows, parallel-coordinates
lines and scatter-plot points, the table sorted by the objective (the chief's best first);
Scalars' curves of every trial; Graphs' op graph and conceptual graph of a trial's model; Text's
failure reasons. It takes the pictures the README and docs/hparams.md show;
`KTC_UPDATE_SCREENSHOTS=1` also copies them to docs/img/.
"""

import csv
import os
import re
import shutil
import signal
import sys
import time

import pytest

from tests.conftest import ROOT
from tests.procs import cluster_env, free_port, hparams_session_groups, http_json, processes, python, wait_until

TRIALS = 10
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SHOTS = {"TABLE VIEW": "hparams-table.png", "PARALLEL COORDINATES VIEW": "hparams-parallel-coordinates.png",
         "SCATTER PLOT MATRIX VIEW": "hparams-scatter-matrix.png", "SORTED": "hparams-sorted-by-objective.png",
         "SCALARS": "scalars.png", "OP GRAPH": "graphs-op.png", "CONCEPTUAL GRAPH": "graphs-conceptual.png",
         "TEXT": "text-failures.png"}
# What the dashboard must show on first opening: ktcluster's columns and the guide's two
# hyperparameters that every trial has, and the objective first among the metrics.
DEFAULT_HPARAMS = {"status", "error", "worker", "model_type", "dropout"}
OBJECTIVE = {"group": "", "tag": "trial/val_accuracy"}
OBJECTIVE_NAME = "val accuracy (objective, max)"  # its display name: the direction is on the page

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
                                              metrics: g.metricValues.map(m => m.name),
                                              values: Object.fromEntries(g.metricValues.map(m => [m.name.tag, m.value]))})),
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


# The labels of the nodes the Graphs dashboard draws.
NODE_LABELS = DEEP + """
const out = [];
for (const el of walk(document)) {
  if (el.tagName === 'TF-GRAPH') {
    for (const t of walk(el.shadowRoot || el)) {
      if (!t.matches('text.nodelabel')) continue;
      const s = t.textContent, h = s.length / 2;  // the label's text stands twice in it (shown and title)
      out.push(s.length % 2 === 0 && s.slice(0, h) === s.slice(h) ? s.slice(0, h) : s);
    }
  }
}
return out;
"""
GRAPH_FAILED = "Graph visualization failed"  # what the Graphs tab says about a graph it cannot draw
# Per Scalars chart: its tag, the line paths drawn and whether every run is ticked.
SCALAR_CHARTS = DEEP + """
const charts = {};
for (const el of walk(document)) {
  if (el.tagName === 'TF-SCALAR-CARD') {
    let lines = 0;
    for (const p of walk(el.shadowRoot || el)) { if (p.matches('path.line')) lines++; }
    charts[el.tag] = lines;
  }
}
let boxes = 0, ticked = 0;
for (const el of walk(document)) {
  if (el.tagName === 'TF-MULTI-CHECKBOX') {
    for (const c of walk(el.shadowRoot || el)) { if (c.tagName === 'PAPER-CHECKBOX') { boxes++; if (c.checked) ticked++; } }
  }
}
return {charts: charts, boxes: boxes, ticked: ticked};
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
        wait_until(lambda: _has_curves(logs / killed / "execution0"), 120, 0.1,
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
            yield {"driver": driver, "base": base, "tmp": tmp, "trials": trials, "killed": killed,
                   "chief_log": chief.output()}
        finally:
            driver.quit()


def _has_curves(run_dir) -> bool:
    """True once the run holds an epoch's curve values (the worker flushes them at each epoch's end)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    return any(value.tag.startswith("epoch/") for path in run_dir.glob("events.out.tfevents.*")
               for event in EventFileLoader(str(path)).Load() for value in event.summary.value)


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


def _named(metric_name) -> dict:
    """A metric's name as the dashboard holds it (an empty group may be left out)."""
    return {"group": metric_name.get("group", ""), "tag": metric_name["tag"]}


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
    assert set(table["hparams"]) == DEFAULT_HPARAMS and _named(table["metrics"][0]) == OBJECTIVE  # item 1
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


def _open(driver, url, ready, what):
    driver.get(url)
    return wait_until(ready, 60, 0.5, what=what)


def test_sorting_the_table_by_the_objective_lists_the_chiefs_best_trial_first(dashboard):
    """The table shows the oracle's score (the best epoch), named with its direction; sorted by it,
    descending, the first row is the trial the chief ranks best (its score, from trials.csv)."""
    driver, base, tmp, trials = dashboard["driver"], dashboard["base"], dashboard["tmp"], dashboard["trials"]
    served = len(hparams_session_groups(base))
    _open(driver, f"{base}/#hparams", lambda: (lambda t: t and len(t["rows"]) == served)(driver.execute_script(TABLE)),
          "the HParams table")
    assert OBJECTIVE_NAME in driver.execute_script(TEXT)
    scores = {t["trial_id"]: float(t["score"]) for t in trials if t["status"] == "COMPLETED"}
    table = driver.execute_script(TABLE)
    for row in table["rows"]:  # every completed trial's row carries exactly the chief's score
        if row["name"] in scores:
            assert row["values"][OBJECTIVE["tag"]] == pytest.approx(scores[row["name"]], abs=1e-6)
    assert driver.execute_script(CLICK, "PAPER-TAB", "TABLE VIEW")
    assert driver.execute_script(CLICK, "PAPER-ITEM", OBJECTIVE_NAME)  # Sorting: sort by
    assert driver.execute_script(CLICK, "PAPER-ITEM", "Descending")  # Sorting: direction
    best = max(scores.values())
    first = wait_until(lambda: (lambda t: t["rows"][0] if t and t["rows"][0]["values"].get(OBJECTIVE["tag"]) is not None
                                and t["rows"][0]["values"][OBJECTIVE["tag"]] == pytest.approx(best, abs=1e-6)
                                else None)(driver.execute_script(TABLE)), 30, what="the chief's best trial first")
    assert scores[first["name"]] == best
    final = re.search(r"best val_accuracy=\S+ \(trial (\S+)\)", dashboard["chief_log"])
    assert final and scores[final.group(1)] == best  # the chief's own last word names a trial of that score
    time.sleep(1)
    _shoot(driver, tmp, SHOTS["SORTED"])


def test_scalars_draws_every_trials_curves_on_first_opening(dashboard):
    """Under 40 runs, every run is ticked: each epoch chart draws a line per trained attempt."""
    driver, base, tmp, trials = dashboard["driver"], dashboard["base"], dashboard["tmp"], dashboard["trials"]
    runs = http_json(f"{base}/data/runs")
    print(f"{len(runs)} runs for {len(trials)} trials")
    assert len(runs) <= 40, runs
    curves = [run for run, tags in http_json(f"{base}/data/plugin/scalars/tags").items() if "epoch/val_accuracy" in tags]
    accepted = {f"{t['trial_id']}/execution0" if t["attempts"] == "1" else f"{t['trial_id']}/attempt{t['attempts']}/execution0"
                for t in trials if t["status"] == "COMPLETED"}
    assert accepted <= set(curves)
    # smoothing is on by default: each run is drawn twice (faded raw values and the smoothed line)
    seen = _open(driver, f"{base}/#scalars",
                 lambda: (lambda c: c if c["charts"].get("epoch/val_accuracy") == 2 * len(curves) else None)(
                     driver.execute_script(SCALAR_CHARTS)), "a line per trained attempt in epoch/val_accuracy")
    assert seen["boxes"] == len(runs) and seen["ticked"] == len(runs)
    assert all(seen["charts"][f"epoch/{name}"] == 2 * len(curves) for name in ("loss", "accuracy", "val_loss"))
    time.sleep(1)
    _shoot(driver, tmp, SHOTS["SCALARS"])


def test_graphs_draws_a_trials_op_graph_and_its_layers(dashboard):
    """The first trial's run: its op graph draws each layer (no 'Graph visualization failed'), and
    the conceptual graph (tag `keras`) draws the Keras layers themselves."""
    driver, base, tmp = dashboard["driver"], dashboard["base"], dashboard["tmp"]
    labels = _open(driver, f"{base}/#graphs", lambda: [l for l in driver.execute_script(NODE_LABELS) if l.startswith("dense")],
                   "the op graph's layers")
    assert labels and GRAPH_FAILED not in driver.execute_script(TEXT)
    time.sleep(1)
    _shoot(driver, tmp, SHOTS["OP GRAPH"])
    assert driver.execute_script(CLICK, "PAPER-ITEM", "keras")  # Tag
    assert driver.execute_script(CLICK, "PAPER-RADIO-BUTTON", "Conceptual graph")  # Graph type
    layers = wait_until(lambda: (lambda ls: ls if "input_layer" in ls else None)(driver.execute_script(NODE_LABELS)), 30,
                        what="the conceptual graph's layers")
    assert "dense" in layers and not any(label.startswith("functional") for label in layers), layers
    assert GRAPH_FAILED not in driver.execute_script(TEXT)
    time.sleep(1)
    _shoot(driver, tmp, SHOTS["CONCEPTUAL GRAPH"])


def test_text_shows_why_attempts_failed(dashboard):
    """Every run is ticked, so the Text tab shows each failed or lost attempt's reason at once."""
    driver, base, tmp = dashboard["driver"], dashboard["base"], dashboard["tmp"]
    _open(driver, f"{base}/#text", lambda: "3-layer MLPs are refused" in driver.execute_script(TEXT), "a failure's text")
    text = driver.execute_script(TEXT)
    assert "LeaseExpired" in text or "no result (worker lost)" in text  # the killed worker's attempt, too
    time.sleep(1)
    _shoot(driver, tmp, SHOTS["TEXT"])
