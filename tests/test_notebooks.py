"""Every notebook in nbs/ runs top to bottom as a test (cells flagged `gpu` are skipped on this CPU machine).

The quickstart tutorial is the one exception: `tests/test_browser.py` runs it whole in a real JupyterLab kernel (every cell,
its assertions included, and fails on any cell's error), then drives its dashboards; running it a second time here would
prove nothing more."""
from pathlib import Path
import pytest

NBS = Path(__file__).resolve().parents[1] / 'nbs'
RUN_BY_THE_BROWSER_TEST = {'tutorials/quickstart.ipynb'}
NOTEBOOKS = sorted(p for p in NBS.rglob('*.ipynb') if '.ipynb_checkpoints' not in p.parts and not p.name.startswith('_')
                   and str(p.relative_to(NBS)) not in RUN_BY_THE_BROWSER_TEST)


@pytest.mark.parametrize('nb', NOTEBOOKS, ids=[str(p.relative_to(NBS)) for p in NOTEBOOKS])
def test_notebook(nb, monkeypatch):
    from nbdev.test import test_nb
    monkeypatch.setenv('LLMLAB_TOLERANCE_SOURCE', str(nb.relative_to(NBS)))   # names the notebook in assert_close's log
    ok, seconds = test_nb(nb, skip_flags=['gpu'], basepath=NBS.parent, cell_timeout=600)
    assert ok, f'{nb.name} failed (traceback above)'
