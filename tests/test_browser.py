"""The dashboards in a real JupyterLab, driven by Playwright with Debian's chromium.

One JupyterLab is started for the module on 127.0.0.1 with a random token; each test puts its notebook (a copy of the
quickstart tutorial; a notebook watching a job) in its folder and stops its kernel at the end. Once the server reports the
kernel idle, the test runs all its cells from the Run menu (clicked again if the first cell did not start), waits for
every dashboard to render in the page, moves one control of each (dropdown, slider, button), then asks the kernel
(through a cell it types) what the widgets hold, so the check is that the browser's action reached the Python side. A failing cell fails the test at once with its traceback, the cell prompts and the
server's log. Screenshots go to tests/artifacts/browser/. The server is always stopped, kernels and all.
"""
import contextlib, json, os, re, shutil, signal, socket, subprocess, sys, textwrap, time, urllib.request
from pathlib import Path
import pytest

pytestmark = pytest.mark.xdist_group('browser')   # its tests share one JupyterLab: one worker runs them all

ROOT = Path(__file__).parent.parent
ARTIFACTS = ROOT / 'tests' / 'artifacts' / 'browser'
CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')
CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
                 '--disable-sync', '--no-first-run', '--disable-dev-shm-usage']
WIDGETS = ['llmlab-generation-playground', 'llmlab-training-monitor', 'llmlab-eval-dashboard', 'llmlab-attention-viewer',
           'llmlab-logit-lens', 'llmlab-patching-viewer', 'llmlab-feature-viewer']


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


@pytest.fixture(scope='module')
def lab(tmp_path_factory):
    "One JupyterLab for this module's tests (url, token, folder): each test puts its notebook in the folder and stops its kernel."
    with running_lab(tmp_path_factory.mktemp('jupyterlab')) as served: yield served


@contextlib.contextmanager
def running_lab(tmp_path):
    "JupyterLab serving the empty folder `tmp_path/lab` (url, token, folder); stopped on exit, kernels and all."
    if CHROMIUM is None: pytest.fail("chromium is not installed: `make install` installs Debian's chromium (apt-get install chromium)")
    pytest.importorskip('playwright')
    work = tmp_path / 'lab'; work.mkdir()
    # JupyterLab 4 renders only the cells in view by default: render them all, so every dashboard is in the DOM; no news pop-up
    settings = tmp_path / 'settings' / '@jupyterlab'
    (settings / 'notebook-extension').mkdir(parents=True); (settings / 'apputils-extension').mkdir(parents=True)
    (settings / 'notebook-extension' / 'tracker.jupyterlab-settings').write_text('{"windowingMode": "none"}')
    (settings / 'apputils-extension' / 'notification.jupyterlab-settings').write_text('{"fetchNews": "false", "checkForUpdates": false}')
    port, token = free_port(), os.urandom(16).hex()
    log = open(tmp_path / 'jupyterlab.log', 'w')
    cmd = [sys.executable, '-m', 'jupyter', 'lab', '--no-browser', '--ip=127.0.0.1', f'--port={port}', f'--IdentityProvider.token={token}',
           f'--ServerApp.root_dir={work}']
    if os.geteuid() == 0: cmd.append('--allow-root')
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, 'JUPYTERLAB_SETTINGS_DIR': str(tmp_path / 'settings')},
                            start_new_session=True)
    url = f'http://127.0.0.1:{port}'
    try:
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(f'{url}/api/status?token={token}', timeout=2); break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError('JupyterLab did not start:\n' + (tmp_path / 'jupyterlab.log').read_text()[-3000:])
                time.sleep(0.5)
        yield url, token, work
    finally:
        os.killpg(proc.pid, signal.SIGTERM)                         # the server and the kernels it started
        try: proc.wait(timeout=20)
        except subprocess.TimeoutExpired: os.killpg(proc.pid, signal.SIGKILL); proc.wait()
        log.close()
        assert proc.poll() is not None


def stop_kernels(lab):
    "Shut down every kernel the server runs (a test's notebook), through the server's own API."
    url, token, _ = lab
    for session in json.loads(urllib.request.urlopen(f'{url}/api/sessions?token={token}', timeout=10).read()):
        req = urllib.request.Request(f"{url}/api/sessions/{session['id']}?token={token}", method='DELETE')
        urllib.request.urlopen(req, timeout=30)


def set_slider(widget, value):
    readout = widget.locator('.widget-readout').first
    readout.click(); readout.press('Control+A'); readout.type(str(value)); readout.press('Enter')


def kernel_state(url, token):
    "The notebook kernel's execution state as the server sees it ('starting', 'idle', 'busy'), or None before a session exists."
    try: sessions = json.loads(urllib.request.urlopen(f'{url}/api/sessions?token={token}', timeout=5).read())
    except OSError: return None
    return sessions[0]['kernel']['execution_state'] if sessions else None


def wait_until(condition, timeout, what, page, lab, poll=1.0, required=True):
    """Poll `condition` until it holds (True) or `timeout` s pass: then fail with what the page and the server show, or
    return False when not `required`. A cell that fails meanwhile fails the test at once."""
    deadline = time.time() + timeout
    while True:
        check_no_cell_failed(what, page, lab)
        if condition(): return True
        if time.time() > deadline:
            if required: fail(f'timed out after {timeout:.0f} s waiting for {what}', page, lab)
            return False
        page.wait_for_timeout(poll * 1000)               # lets Playwright process the page's events meanwhile


def check_no_cell_failed(what, page, lab):
    errors = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]:has-text("Error")')
    if errors.count(): fail(f'a cell failed ({what})', page, lab, errors.first.text_content())


def fail(message, page, lab, detail=''):
    url, token, work = lab
    try: page.screenshot(path=str(ARTIFACTS / 'failure.png'))
    except Exception: pass
    prompts = page.evaluate("() => [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')].map(p => p.textContent)")
    log = (work.parent / 'jupyterlab.log').read_text()[-2000:]
    pytest.fail(f'{message}\n{detail}\ncode cell prompts: {prompts}\nkernel: {kernel_state(url, token)}\n'
                f'screenshot: {ARTIFACTS / "failure.png"}\njupyterlab.log (end):\n{log}')


def run_all_cells(page, lab):
    "Run > Run All Cells, once the kernel is idle; repeated if the click did not start the first cell (a menu opened too early)."
    url, token, _ = lab
    wait_until(lambda: kernel_state(url, token) == 'idle', 180, 'the kernel to start', page, lab)
    first_prompt = page.locator('.jp-Notebook .jp-CodeCell .jp-InputPrompt').first
    for _ in range(3):
        page.keyboard.press('Escape')
        page.locator('.lm-MenuBar-itemLabel', has_text='Run').first.click()
        page.locator('.lm-Menu-itemLabel', has_text='Run All Cells').first.click()
        if wait_until(lambda: re.search(r'\[(\*|\d+)\]', first_prompt.text_content() or ''), 30, 'the first cell to start', page, lab,
                      poll=0.5, required=False): return
    fail('Run All Cells did not start the first cell (3 tries)', page, lab)


def open_and_run(playwright, lab, notebook, viewport):
    """chromium on `notebook` in the served JupyterLab (a tutorial of nbs/tutorials is copied there first), all its cells
    started: (browser, page); the caller closes the browser."""
    url, token, work = lab
    if (ROOT / 'nbs' / 'tutorials' / notebook).exists(): shutil.copy(ROOT / 'nbs' / 'tutorials' / notebook, work / notebook)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    page = browser.new_page(viewport=viewport)
    page.set_default_timeout(60_000)
    # a workspace of its own, reset: the server is shared, and JupyterLab would reopen an earlier test's notebook beside this one
    page.goto(f'{url}/lab/workspaces/{Path(notebook).stem}/tree/{notebook}?token={token}&reset')
    page.wait_for_selector('.jp-NotebookPanel .jp-CodeCell', timeout=120_000)
    run_all_cells(page, lab)
    return browser, page


def ask_kernel(page, lab, expression:str) -> Path:
    """What the widgets hold now, as the kernel sees it: a cell typed at the end of the notebook dumps `expression` (a dict)
    as JSON; the file, once written. The kernel handles the controls' comm messages before this cell's execute request (one
    shell channel, in order): no wait is needed between moving a control and asking."""
    state_file = lab[2] / 'browser_state.json'
    state_file.unlink(missing_ok=True)
    cells = page.locator('.jp-Notebook .jp-Cell')
    before = cells.count()
    cells.last.locator('.jp-InputArea-prompt').click()                                  # select it, command mode
    page.keyboard.press('Escape'); page.keyboard.press('b')                             # a new cell below
    wait_until(lambda: cells.count() == before + 1, 30, 'the new cell', page, lab, poll=0.1)
    cells.last.locator('.cm-content').click()                                           # its editor, focused
    page.keyboard.insert_text(f"import json; json.dump({expression}, open('browser_state.json', 'w'))")
    page.keyboard.press('Shift+Enter')
    deadline = time.time() + 300
    while not state_file.exists() and time.time() < deadline: time.sleep(0.5)
    return state_file


def wait_for_the_last_cell(page, lab, deadline:float):
    "The last cell has run when its prompt shows an execution count; no cell failed."
    last_prompt = page.locator('.jp-Notebook .jp-CodeCell .jp-InputPrompt').last
    wait_until(lambda: re.search(r'\[\d+\]', last_prompt.text_content() or ''), deadline - time.time(), 'the last cell', page, lab)
    check_no_cell_failed('after the last cell', page, lab)


def run_tutorial(playwright, lab, notebook, viewport, selectors):
    """A tutorial run whole in JupyterLab: (browser, page, the first widget of each CSS selector) once every one shows and the
    last cell has run; the caller closes the browser."""
    browser, page = open_and_run(playwright, lab, notebook, viewport)
    try:
        deadline = time.time() + 600
        widgets = [page.locator(sel).first for sel in selectors]
        for w, sel in zip(widgets, selectors): wait_until(w.is_visible, deadline - time.time(), sel, page, lab)
        wait_for_the_last_cell(page, lab, deadline)
    except BaseException: browser.close(); stop_kernels(lab); raise
    return browser, page, widgets

@pytest.mark.slow
def test_quickstart_tutorial_dashboards_render_and_respond_in_jupyterlab(lab):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser, page = open_and_run(p, lab, 'quickstart.ipynb', {'width': 1500, 'height': 1100})
        try:
            widgets, deadline = {}, time.time() + 900             # the whole tutorial: ~1 min idle, ~3 min on 2 busy cores
            for cls in WIDGETS:                                   # each dashboard renders in the DOM
                widgets[cls] = page.locator(f'.{cls}').first
                wait_until(widgets[cls].is_visible, deadline - time.time(), f'the {cls} widget', page, lab)
            wait_for_the_last_cell(page, lab, deadline)               # the logit-lens and patching assertions
            for cls, w in widgets.items():
                w.scroll_into_view_if_needed(); w.screenshot(path=str(ARTIFACTS / f'{cls}.png'))
            # one control of each widget
            widgets['llmlab-training-monitor'].locator('select').first.select_option(label='lr')
            widgets['llmlab-eval-dashboard'].locator('.widget-dropdown select').nth(1).select_option(label='smollm2')
            set_slider(widgets['llmlab-attention-viewer'].locator('.widget-slider').first, 3)
            set_slider(widgets['llmlab-logit-lens'].locator('.widget-slider').first, 3)
            widgets['llmlab-patching-viewer'].locator('select').first.select_option(label='mlp_out')
            widgets['llmlab-feature-viewer'].locator('select').first.select_option(index=1)
            set_slider(widgets['llmlab-generation-playground'].locator('.widget-slider').nth(3), 6)   # max tokens
            widgets['llmlab-generation-playground'].locator('button', has_text='Generate').click()
            state_file = ask_kernel(page, lab, "{'metric': monitor.metric.value, 'run': dashboard.run.value, "
                               "'layer': attention.layer.value, 'k': lens.k.value, 'max_tokens': playground.max_tokens.value, "
                               "'generated': len(playground.results['SmolLM2-135M']['ids']), 'pattern_shape': list(attention.pattern().shape), "
                               "'lens_columns': list(lens.top().columns), 'patch': patching.activation.value, "
                               "'patched': sorted(patching._cache), 'feature': features.feature.value, "
                               "'second_feature': features.feature.options[1][1], 'feature_summary': features.summary.value, "
                               "'series_is_lr': monitor.series()[1][:1] == monitor.series('lr')[1][:1]}")
            for cls, w in widgets.items(): w.screenshot(path=str(ARTIFACTS / f'{cls}-after.png'))
            page.screenshot(path=str(ARTIFACTS / 'notebook.png'), full_page=False)
        finally:
            browser.close(); stop_kernels(lab)
    state = json.loads(state_file.read_text())
    assert state['metric'] == 'lr' and state['series_is_lr']
    assert state['run'] == 'smollm2'
    assert state['layer'] == 3 and state['k'] == 3 and state['lens_columns'] == ['layer', 'top1', 'top2', 'top3']
    assert state['patch'] == 'mlp_out' and state['patched'] == ['mlp_out', 'resid_pre']   # the dropdown recomputed the heat map
    assert state['max_tokens'] == 6 and 1 <= state['generated'] <= 6
    assert state['feature'] == state['second_feature'] and f"feature {state['feature']}<" in state['feature_summary']


@pytest.mark.slow
def test_moe_tutorial_routing_viewer_renders_and_responds_in_jupyterlab(lab):
    "The MoE tutorial whole in JupyterLab: its monitor shows the experts' load, its routing viewer follows its dropdowns."
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:   # ~20 s idle
        browser, page, (monitor, viewer) = run_tutorial(p, lab, 'moe.ipynb', {'width': 1300, 'height': 1000},
                                                        ('.llmlab-training-monitor', '.llmlab-routing-viewer'))
        try:
            viewer.locator('select').nth(1).select_option(label='expert 5')
            viewer.locator('select').first.select_option(label='layer 2')
            state_file = ask_kernel(page, lab, "{'expert': routing_viewer.expert.value, 'layer': routing_viewer.layer.value, "
                                    "'taken': len(routing_viewer.taken()), 'text': routing_viewer.text.value, 'metric': monitor.metric.value}")
            wait_until(lambda: 'expert 5 takes' in viewer.inner_text(), 60, 'the viewer to show expert 5', page, lab)
            viewer.scroll_into_view_if_needed(); viewer.screenshot(path=str(ARTIFACTS / 'llmlab-routing-viewer.png'))
            monitor.scroll_into_view_if_needed(); monitor.screenshot(path=str(ARTIFACTS / 'llmlab-training-monitor-moe.png'))
        finally:
            browser.close(); stop_kernels(lab)
    state = json.loads(state_file.read_text())
    assert state['expert'] == 5 and state['layer'] == 2 and state['metric'] == 'moe_tokens_per_expert'
    assert f"expert 5 takes {state['taken']} of" in state['text'] and 'at layer 2' in state['text']


JOB = textwrap.dedent('''
    import sys, time, torch
    from llmlab.data import TokenShards, build_shards
    from llmlab.model import Llama, ModelConfig
    from llmlab.train import Trainer, TrainConfig
    class Tok:
        eos_token_id, name_or_path = 0, 'char'
        def __call__(self, texts, add_special_tokens=False): return {'input_ids': [[ord(c) % 31 + 1 for c in t] for t in texts]}
        def __len__(self): return 32
    data = TokenShards(build_shards(['the quick brown fox jumps over the lazy dog ' * 3] * 40, Tok(), sys.argv[1] + '-data',
                                    progress=False, num_proc=1), 16)
    torch.manual_seed(0)
    model = Llama(ModelConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4))
    class Slow:   # a step every ~0.3 s: a run that lasts while the browser watches it
        def on_step_end(self, trainer, record): time.sleep(0.3)
    cfg = TrainConfig(run_dir=sys.argv[1], max_steps=2000, batch_size=8, lr=3e-3, warmup_steps=5, log_every=1, eval_every=25,
                      eval_batches=2, save_every=10, progress=False, trackers=[], peak_tflops=1.0)
    Trainer(model, cfg, data, data, callbacks=[Slow()]).fit()
''')


@pytest.mark.slow
def test_monitor_follows_a_two_process_job_and_shows_a_dead_rank(lab, tmp_path):
    """A 2-process torchrun job writes its run folder; a notebook in JupyterLab holds only `TrainingMonitor(run_dir)`. The
    page shows both ranks alive and the curve growing; then one rank is killed and the page marks it dead."""
    import nbformat
    from playwright.sync_api import sync_playwright
    from llmlab.core import read_heartbeats
    run_dir, script = tmp_path / 'job', tmp_path / 'job.py'
    script.write_text(JOB)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(f"from llmlab.widgets import TrainingMonitor\n"
                                          f"monitor = TrainingMonitor({str(run_dir)!r}, interval=0.5, dead_after=5.0)\nmonitor")]
    nb.metadata['kernelspec'] = {'display_name': 'python3', 'language': 'python', 'name': 'python3'}
    nbformat.write(nb, lab[2] / 'monitor.ipynb')
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    job = subprocess.Popen([str(Path(sys.executable).with_name('torchrun')), '--nproc_per_node', '2', '--master_port', str(free_port()),
                            str(script), str(run_dir)], env={**os.environ, 'OMP_NUM_THREADS': '1'}, start_new_session=True,
                           stdout=open(tmp_path / 'job.log', 'w'), stderr=subprocess.STDOUT)
    try:
        served = lab
        with sync_playwright() as p:
            browser, page = open_and_run(p, served, 'monitor.ipynb', {'width': 1300, 'height': 1000})
            try:
                monitor = page.locator('.llmlab-training-monitor').first
                summary = monitor.locator('.llmlab-ranks-summary')
                wait_until(lambda: summary.count() and '2 of 2 ranks alive' in summary.text_content(), 240, 'both ranks alive', page, served)
                def shown_step():
                    m = re.search(r'step (\d+), loss', monitor.text_content() or '')
                    return int(m.group(1)) if m else 0
                def plot(): return monitor.locator('img').first.get_attribute('src') if monitor.locator('img').count() else None
                wait_until(lambda: shown_step() > 0 and plot(), 120, 'the first steps on the page', page, served)
                first_step, first_plot = shown_step(), plot()
                wait_until(lambda: shown_step() >= first_step + 10, 120, 'ten more steps on the page', page, served)
                assert plot() != first_plot                                     # the curve was redrawn with the new steps
                assert 'last checkpoint step-' in summary.text_content()
                monitor.screenshot(path=str(ARTIFACTS / 'live-monitor-two-ranks.png'))
                victim = next(h for h in read_heartbeats(run_dir) if h['rank'] == 1)
                os.kill(victim['pid'], signal.SIGKILL)
                killed = time.time()
                dead_row = monitor.locator('tr.llmlab-rank-dead', has_text=str(victim['pid']))
                wait_until(lambda: dead_row.count() > 0, 30, 'the killed rank shown dead', page, served, poll=0.2)
                seconds = time.time() - killed
                monitor.screenshot(path=str(ARTIFACTS / 'live-monitor-dead-rank.png'))
                print(f'steps on the page: {first_step} -> {shown_step()}; killed rank shown dead after {seconds:.1f} s')
                assert seconds < 10, seconds
            finally:
                browser.close(); stop_kernels(served)
    finally:
        os.killpg(job.pid, signal.SIGKILL); job.wait()


@pytest.mark.slow
def test_grpo_tutorial_rollout_viewer_renders_and_responds_in_jupyterlab(lab):
    "The GRPO tutorial whole in JupyterLab (SmolLM2, 2 steps): the monitor offers the rewards, the rollout viewer follows its dropdowns."
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:   # ~50 s idle
        browser, page, (monitor, viewer) = run_tutorial(p, lab, 'grpo_smollm2.ipynb', {'width': 1300, 'height': 1100},
                                                        ('.llmlab-training-monitor', '.llmlab-rollout-viewer'))
        try:
            viewer.locator('select').first.select_option(label='2')
            viewer.locator('select').nth(1).select_option(index=1)
            wait_until(lambda: 'step 2</b>' in viewer.inner_html(), 60, 'the viewer to show step 2', page, lab)
            state_file = ask_kernel(page, lab, "{'step': viewer.step.value, 'prompt': viewer.prompt.value, 'group': viewer.group(), "
                                    "'record': [r for r in viewer.records if r['step'] == 2][0], 'metric': monitor.metric.value, "
                                    "'options': list(monitor.metric.options)}")
            rows = viewer.locator('table.llmlab-rollout-group tr')
            wait_until(lambda: rows.count() == 5, 30, 'a group of 4 completions in the table', page, lab)
            shown = [rows.nth(i).locator('td').nth(2).inner_text() for i in range(1, 5)]
            viewer.scroll_into_view_if_needed(); viewer.screenshot(path=str(ARTIFACTS / 'llmlab-rollout-viewer.png'))
            monitor.scroll_into_view_if_needed(); monitor.screenshot(path=str(ARTIFACTS / 'llmlab-training-monitor-grpo.png'))
        finally:
            browser.close(); stop_kernels(lab)
    state = json.loads(state_file.read_text())
    assert state['step'] == 2 and state['prompt'] == 1 and state['metric'] == 'reward'
    assert 'rewards/answer/mean' in state['options'] and 'frac_reward_zero_std' in state['options']
    record = state['record']                                # the page shows the second prompt's group of step 2, from the run folder
    completions = [c if isinstance(c, str) else c[-1]['content'] for c in record['completions'][4:8]]
    assert [g['completion'] for g in state['group']] == completions and [g['advantage'] for g in state['group']] == record['advantages'][4:8]
    assert [s.strip() for s in shown] == [c.strip() for c in completions]


RAG_NOTEBOOK = '''from llmlab.checkpoints import load_pretrained, load_tokenizer
from llmlab.eval import EvalModel
from llmlab.rag import Pipeline
from llmlab.retrieval import BM25Retriever, chunk_documents
from llmlab.widgets import RAGInspector
facts = [('zorblax', 'Zorblax', 'Zorblax is a small cold planet in the Vireo system. Its capital city is Quimbly, founded by miners.'),
         ('tarn', 'Tarnwick', 'Tarnwick is a river port on the planet Ossel. Its capital is Brenmoor.'),
         ('ossel', 'Ossel', 'Ossel is a gas giant with eleven moons; its largest moon is Fendra.')]
index = BM25Retriever().index(chunk_documents([{'id': i, 'title': t, 'text': x} for i, t, x in facts]), progress=False)
lm = EvalModel(load_pretrained('smollm2-135m-instruct', progress=False), load_tokenizer('smollm2-135m-instruct'), progress=False)
inspector = RAGInspector(lm, Pipeline(index, k=3))
inspector'''


@pytest.mark.slow
def test_rag_inspector_answers_a_question_typed_into_the_page(lab):
    """A notebook holding a RAGInspector over SmolLM2 and BM25: a question typed into the page and Ask give the answer, the
    passages with their scores, and the shading of each by leave-one-out attribution, the same as the kernel computed."""
    import nbformat
    from playwright.sync_api import sync_playwright
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(RAG_NOTEBOOK)]
    nb.metadata['kernelspec'] = {'display_name': 'python3', 'language': 'python', 'name': 'python3'}
    nbformat.write(nb, lab[2] / 'rag_inspector.ipynb')
    with sync_playwright() as p:
        browser, page = open_and_run(p, lab, 'rag_inspector.ipynb', {'width': 1300, 'height': 900})
        try:
            inspector = page.locator('.llmlab-rag-inspector').first
            wait_until(lambda: inspector.count() and inspector.locator('input[type=text]').count(), 120, 'the inspector', page, lab)
            inspector.locator('input[type=text]').first.fill('What is the capital city of the planet Zorblax?')
            inspector.locator('button', has_text='Ask').click()
            rows = inspector.locator('table.llmlab-rag-passages tr')
            wait_until(lambda: rows.count() > 1, 120, 'the passages in the table', page, lab)   # BM25 returns those sharing a word
            shown = [[rows.nth(i).locator('td').nth(j).inner_text() for j in range(4)] for i in range(1, rows.count())]
            styles = [rows.nth(i).get_attribute('style') for i in range(1, rows.count())]
            answer = inspector.locator('.llmlab-rag-answer').inner_text()
            state_file = ask_kernel(page, lab, 'inspector.result')
            inspector.scroll_into_view_if_needed(); inspector.screenshot(path=str(ARTIFACTS / 'llmlab-rag-inspector.png'))
        finally:
            browser.close(); stop_kernels(lab)
    state = json.loads(state_file.read_text())
    assert state['question'] == 'What is the capital city of the planet Zorblax?' and 'Quimbly' in answer
    assert [r[1] for r in shown] == [p['id'] for p in state['passages']]
    assert [float(r[2]) for r in shown] == [round(p['score'], 3) for p in state['passages']]
    assert [float(r[3]) for r in shown] == [round(p['attribution'], 2) for p in state['passages']]
    best = max(range(len(shown)), key=lambda i: state['passages'][i]['attribution'])
    assert state['passages'][best]['id'] == 'zorblax#0' and 'rgba(27,127,58,0.50)' in styles[best]
