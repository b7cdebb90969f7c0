"""Every notebook in nbs/ runs top to bottom as a test (cells flagged `gpu` are skipped on this CPU machine).

The quickstart, MoE and GRPO tutorials are the exceptions: `tests/test_browser.py` runs them whole in a real JupyterLab kernel
(every cell, its assertions included, and fails on any cell's error), then drives their dashboards; running them a second
time here would prove nothing more."""
from pathlib import Path
import pytest

NBS = Path(__file__).resolve().parents[1] / 'nbs'
RUN_BY_THE_BROWSER_TEST = {'tutorials/quickstart.ipynb', 'tutorials/moe.ipynb', 'tutorials/grpo_smollm2.ipynb'}
NOTEBOOKS = sorted(p for p in NBS.rglob('*.ipynb') if '.ipynb_checkpoints' not in p.parts and not p.name.startswith('_')
                   and str(p.relative_to(NBS)) not in RUN_BY_THE_BROWSER_TEST)


# the notebooks that take longest (a quarter to a full minute on two busy cores): started first under pytest-xdist (conftest.py)
SLOW = {'tutorials/finetune_smollm2.ipynb', '10d_rag.ipynb', 'tutorials/interp_smollm2.ipynb', '08_train.ipynb', '12_widgets.ipynb',
        '05b_decode_kernels.ipynb', '10b_harness.ipynb', '13_cli.ipynb', '06_memory.ipynb'}


@pytest.fixture(autouse=True)
def library_registrations_restored():
    """Notebooks run in this process one after another, and a chapter that defines a registered class registers its own copy
    (02b_moe's `SparseMoE`, with the chapter's own registries of scoring functions and expert implementations): the
    notebooks after it must find the library's entries again. Entries a notebook adds (a first import's) stay."""
    from llmlab.core import Registry
    saved = [(r, dict(r._items)) for r in list(Registry.instances)]
    yield
    for registry, items in saved:
        for name, obj in items.items():
            if registry._items.get(name) is not obj: registry._items[name] = obj


@pytest.mark.parametrize('nb', [pytest.param(p, marks=[pytest.mark.slow] if str(p.relative_to(NBS)) in SLOW else [])
                                for p in NOTEBOOKS], ids=[str(p.relative_to(NBS)) for p in NOTEBOOKS])
def test_notebook(nb, monkeypatch):
    from nbdev.test import test_nb
    monkeypatch.setenv('LLMLAB_TOLERANCE_SOURCE', str(nb.relative_to(NBS)))   # names the notebook in assert_close's log
    ok, seconds = test_nb(nb, skip_flags=['gpu'], basepath=NBS.parent, cell_timeout=600)
    assert ok, f'{nb.name} failed (traceback above)'
