import sys

import pytest

from shared.loader import ImportFromStringError, import_from_string


@pytest.fixture
def pkg(tmp_path, monkeypatch):
    (tmp_path / "good_mod.py").write_text("def build(hp):\n    return hp\nVALUE = 3\n")
    (tmp_path / "raising_mod.py").write_text("raise RuntimeError('boom at import')\n")
    (tmp_path / "dep_mod.py").write_text("import not_installed_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in ("good_mod", "raising_mod", "dep_mod"):
        sys.modules.pop(name, None)


def test_imports_a_function(pkg):
    assert import_from_string("good_mod:build", "KTC_MODEL")(5) == 5


@pytest.mark.parametrize("path,message", [
    ("missing_mod:build", "KTC_MODEL='missing_mod:build': could not import module 'missing_mod'"),
    ("good_mod:nope", "KTC_MODEL='good_mod:nope': module 'good_mod' has no attribute 'nope'"),
    ("good_mod:VALUE", "KTC_MODEL='good_mod:VALUE': 'VALUE' is not callable"),
    ("raising_mod:f", "KTC_MODEL='raising_mod:f': importing 'raising_mod' raised RuntimeError: boom at import"),
    ("dep_mod:f", "KTC_MODEL='dep_mod:f': importing 'dep_mod' failed: No module named 'not_installed_dependency'"),
])
def test_errors_name_what_failed(pkg, path, message):
    with pytest.raises(ImportFromStringError) as err:
        import_from_string(path, "KTC_MODEL")
    assert str(err.value).startswith(message)
