"""The HParams dashboard of a real ktcluster run, in headless Chromium (Debian's chromium and chromedriver).

Takes the three pictures the README shows (table, parallel coordinates, scatter matrix) and asserts
the page rendered the trials. `KTC_UPDATE_SCREENSHOTS=1` also copies them to docs/img/.
"""

import os
import shutil
import sys
import time

import pytest

from tests.conftest import ROOT
from tests.procs import cluster_env, free_port, hparams_session_groups, http_json, processes, python, wait_until

TRIALS = 10
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SHOTS = {"TABLE VIEW": "hparams-table.png", "PARALLEL COORDINATES VIEW": "hparams-parallel-coordinates.png",
         "SCATTER PLOT MATRIX VIEW": "hparams-scatter-matrix.png"}
# The guide's columns, the worker column and the objective (TensorBoard shows the first five
# hyperparameters and metrics, alphabetically, until told otherwise).
SHOWN = {"model type", "mlp layers", "units 0", "cnn layers", "filters 0", "dropout", "worker",
         "validation accuracy"}

# TensorBoard's dashboard is Polymer: everything sits in nested shadow roots.
DEEP = """
function* walk(root) {
  for (const el of root.querySelectorAll('*')) { yield el; if (el.shadowRoot) yield* walk(el.shadowRoot); }
}
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
CHECKBOXES = DEEP + """
const out = {};
for (const el of walk(document)) {
  if (el.tagName === 'PAPER-CHECKBOX') { out[(el.innerText || el.textContent || '').trim()] = el.checked; }
}
return out;
"""
TABLE = DEEP + """
for (const el of walk(document)) {
  if (el.tagName === 'TF-HPARAMS-TABLE-VIEW') { return (el.shadowRoot || el).textContent; }
}
return '';
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


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    _require_browser()  # before the search: a machine without Chromium should not train first
    tmp = tmp_path_factory.mktemp("browser")
    env = cluster_env(tmp, free_port(), KTC_MAX_TRIALS=TRIALS, KTC_EPOCHS=2, KTC_SEED=7, KTC_PROJECT="guide")
    tb_port = free_port()
    with processes() as start:
        chief = start("chief", python("chief"), env, tmp)
        workers = [start(f"w{n}", python("worker"), {**env, "KERASTUNER_TUNER_ID": f"worker-{n}"}, tmp)
                   for n in (1, 2)]
        assert chief.wait(timeout=600) == 0, chief.output()[-2000:]
        assert [w.wait(timeout=60) for w in workers] == [0, 0]
        start("tensorboard", [os.path.join(os.path.dirname(sys.executable), "tensorboard"), "--logdir",
                              str(tmp / "logs" / "guide"), "--port", str(tb_port), "--host", "127.0.0.1"], env, tmp)
        base = f"http://127.0.0.1:{tb_port}"
        wait_until(lambda: _all_sessions(base), 90, what="TensorBoard to load every trial")
        driver = _browser()
        try:
            yield driver, base, tmp
        finally:
            driver.quit()


def _all_sessions(base):
    try:
        return len(hparams_session_groups(base)) >= TRIALS
    except OSError:
        return False


def _shoot(driver, tmp, name):
    path = tmp / name
    driver.save_screenshot(str(path))
    if os.environ.get("KTC_UPDATE_SCREENSHOTS") == "1":
        shutil.copy(path, os.path.join(ROOT, "docs", "img", name))
    return path


def test_hparams_views_render_every_trial(dashboard):
    driver, base, tmp = dashboard
    driver.get(f"{base}/#hparams")
    wait_until(lambda: "TABLE VIEW" in driver.execute_script(TEXT).upper(), 60, what="the HParams dashboard")
    # Show the guide's columns (TensorBoard shows the first five alphabetically by default).
    boxes = wait_until(lambda: driver.execute_script(CHECKBOXES), 30, what="the hyperparameter filters")
    assert SHOWN <= set(boxes), boxes
    experiment = http_json(f"{base}/data/plugin/hparams/experiment", {"experimentName": ""})
    columns = {h["displayName"] or h["name"] for h in experiment["hparamInfos"]}
    columns |= {m["displayName"] for m in experiment["metricInfos"]}
    for label, checked in boxes.items():  # only column toggles: value and status filters stay as they are
        if label in columns and (label in SHOWN) != checked:
            driver.execute_script(CLICK, "PAPER-CHECKBOX", label)
    table = wait_until(lambda: _table_lists_trials(driver), 30, what="the table to list every trial and worker")
    assert "No hparams data" not in driver.execute_script(TEXT)
    assert "mlp" in table and "cnn" in table
    time.sleep(1)  # let the columns settle before the picture
    assert _shoot(driver, tmp, SHOTS["TABLE VIEW"]).stat().st_size > 20_000

    # A parallel-coordinates line needs a value on every axis, and each trial records only the
    # hyperparameters its model used: compare one branch, as the guide's filtered view does.
    mlp = sum(1 for g in hparams_session_groups(base) if g["hparams"]["model_type"] == "mlp")
    assert mlp >= 3, "the seed should give several MLP trials to compare"
    for label in ("cnn", "cnn layers", "filters 0"):
        assert driver.execute_script(CLICK, "PAPER-CHECKBOX", label), label
    assert driver.execute_script(CLICK, "PAPER-TAB", "PARALLEL COORDINATES VIEW")
    wait_until(lambda: driver.execute_script(COUNT, "tf-hparams-parallel-coords-plot", "g.foreground path") >= mlp,
               30, what="one line per MLP trial in the parallel coordinates")
    time.sleep(1)  # the tab indicator slides
    _shoot(driver, tmp, SHOTS["PARALLEL COORDINATES VIEW"])

    assert driver.execute_script(CLICK, "PAPER-TAB", "SCATTER PLOT MATRIX VIEW")
    wait_until(lambda: driver.execute_script(COUNT, "tf-hparams-scatter-plot-matrix-plot", "circle") >= mlp,
               30, what="points in the scatter plot matrix")
    time.sleep(1)
    _shoot(driver, tmp, SHOTS["SCATTER PLOT MATRIX VIEW"])


def _table_lists_trials(driver):
    """The table view's own text (not the filter pane's): every trial id and both workers."""
    text = driver.execute_script(TABLE)
    ids = [f"{t:02d}" for t in range(TRIALS)]
    return text if all(i in text for i in ids) and "worker-1" in text and "worker-2" in text else None
