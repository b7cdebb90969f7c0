"""The documentation site: built the way `make docs` builds it, every page there with its prose and API signatures, every
link between pages resolving, and the front page rendered in chromium (screenshot in tests/artifacts/docs/).

CI runs `make docs` first and sets LLMLAB_DOCS_DIR=_docs, so this checks the site CI built; without it the test builds
the site into a temporary folder itself.
"""
import ast, html, importlib, inspect, json, os, re, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / 'nbs'
sys.path.insert(0, str(ROOT / 'tools'))
from build_docs import page_name  # noqa: E402

NOTEBOOKS = sorted(str(p.relative_to(NBS)) for p in NBS.rglob('*.ipynb') if '.ipynb_checkpoints' not in p.parts)


def test_docs_processing_runs_only_cells_that_stand_alone():
    """nbdev's processing runs export cells, show_doc cells and any cell with an import (all of it), and skips the rest:
    a cell it runs must not need one it skips, so a cell that imports holds nothing but imports."""
    from nbdev.process import NBProcessor
    from nbdev.processors import _do_eval
    bad = []
    for rel in NOTEBOOKS:
        for cell in NBProcessor(NBS / rel, []).nb.cells:
            if cell.cell_type != 'code' or not _do_eval(cell) or cell.directives_.keys() & {'export', 'exports', 'exporti'}: continue
            if any(not isinstance(t, (ast.Import, ast.ImportFrom)) for t in cell.parsed_()) and 'show_doc' not in cell.source:
                bad.append(f'{rel} cell {cell.idx_}: {cell.source[:80]!r}')
    assert not bad, 'move these imports to an import cell of their own:\n' + '\n'.join(bad)


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    if os.environ.get('LLMLAB_DOCS_DIR'):
        out = Path(os.environ['LLMLAB_DOCS_DIR']).resolve()
        assert (out / 'index.html').exists(), f'LLMLAB_DOCS_DIR={out} has no index.html: run `make docs` first'
        return out
    out = tmp_path_factory.mktemp('docs') / '_docs'
    r = subprocess.run([sys.executable, str(ROOT / 'tools' / 'build_docs.py'), '--out', str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return out


def text_of(page:Path) -> str:
    "The page's visible text, roughly: tags dropped, entities decoded, whitespace collapsed."
    body = re.sub(r'<(script|style)\b.*?</\1>', ' ', page.read_text(), flags=re.S)
    body = re.sub(r'</?(a|code|span|em|strong)\b[^>]*>', '', body)   # inline marks join their words
    return re.sub(r'\s+', ' ', html.unescape(re.sub(r'<[^>]+>', ' ', body)))


def plain(markdown:str) -> str:
    "A markdown line as it reads on the page: no emphasis, code or link marks."
    s = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', markdown)
    return re.sub(r'\s+', ' ', re.sub(r'[*`_#>]', '', s)).strip()


@pytest.mark.parametrize('rel', NOTEBOOKS)
def test_every_notebook_has_its_page_with_prose_and_signatures(site, rel):
    page = site / page_name(rel)
    assert page.exists(), f'{rel} has no page {page_name(rel)}'
    text = re.sub(r'\s+', ' ', re.sub(r'[*`_#>]', '', text_of(page)))
    nb = json.loads((NBS / rel).read_text())
    prose = [plain(l) for c in nb['cells'] if c['cell_type'] == 'markdown' for l in ''.join(c['source']).splitlines()]
    prose = [l for l in prose if len(l) > 30 and not l.startswith(('|', '-', '!'))]
    missing = [l[:60] for l in prose if l[:60] not in text]
    assert len(prose) >= 2 and not missing, f'{rel}: prose missing from {page.name}: {missing[:3]}'
    first = ''.join(nb['cells'][0]['source'])
    if m := re.match(r'#\|\s*default_exp\s+(\S+)', first):   # a chapter: every exported name documented with its signature
        mod = importlib.import_module(f'llmlab.{m.group(1)}')
        page_html = page.read_text()
        for name in mod.__all__:
            obj = getattr(mod, name)
            if not (inspect.isfunction(obj) or inspect.isclass(obj)): continue   # constants and type aliases have no signature
            assert re.search(rf'<h[34] id="{re.escape(name)}"', page_html), f'{page.name}: no show_doc section for {name}'
            try: params = [p for p in inspect.signature(obj).parameters if p not in ('self', 'args', 'kwargs')]
            except (TypeError, ValueError): params = []
            section = page_html.split(f'id="{name}"', 1)[1][:4000]
            for p in params[:3]: assert p in section, f'{page.name}: the signature of {name} lacks {p!r}'


def test_every_link_between_pages_resolves(site):
    pages = sorted(site.rglob('*.html'))
    ids = {p: set(re.findall(r'\sid="([^"]+)"', p.read_text())) for p in pages}
    broken, site_links = [], 0
    for page in pages:
        for href in re.findall(r'href="([^"]+)"', page.read_text()):
            href = html.unescape(href)
            if re.match(r'[a-z]+:', href):   # http(s), mailto: other sites are not part of this one
                assert 'llmlab.github.io' not in href, f'{page.name}: {href} points at the published site, not at the page here'
                continue
            target, _, anchor = href.partition('#')
            dest = (page.parent / target).resolve() if target else page
            site_links += bool(target)
            if not dest.exists(): broken.append(f'{page.relative_to(site)}: {href} (no such page)')
            elif anchor and anchor not in ids.get(dest, set()): broken.append(f'{page.relative_to(site)}: {href} (no such anchor)')
    assert not broken, '\n'.join(broken)
    assert site_links >= len(pages) * (len(pages) - 1)   # the navigation bar alone links every page to every other


def test_front_page_in_chromium(site):
    "The front page as a reader sees it: rendered by Debian's chromium, with the README's story and the navigation."
    from test_browser import CHROMIUM, CHROMIUM_ARGS
    if CHROMIUM is None: pytest.fail("chromium is not installed: `make install` installs Debian's chromium (apt-get install chromium)")
    sync_api = pytest.importorskip('playwright.sync_api')
    out = ROOT / 'tests' / 'artifacts' / 'docs'
    out.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={'width': 1280, 'height': 1000})
            page.route(re.compile(r'^https?://'), lambda route: route.abort())   # offline: CDN scripts fail at once
            page.goto((site / 'index.html').as_uri(), wait_until='domcontentloaded')
            page.wait_for_selector('nav.llmlab-nav a')
            assert 'llmlab' in page.locator('h1').first.inner_text()
            nav = page.locator('nav.llmlab-nav a').all_inner_texts()
            assert len(nav) == len(NOTEBOOKS) and 'Quickstart: chat, train, evaluate, look inside' in nav
            page.screenshot(path=str(out / 'index.png'))
            page.locator('nav.llmlab-nav a', has_text='Model').first.click()   # navigate as a reader would
            page.wait_for_selector('h3#Llama')
            assert page.url.endswith('/model.html')
            page.screenshot(path=str(out / 'model.png'))
        finally: browser.close()
