"""Build the documentation site without Quarto: nbdev processes the notebooks (show_doc, hidden cells, directives),
then nbconvert renders each as HTML, named as the Quarto site names its pages (`08_train.ipynb` -> `train.html`).
Links into the site (nbdev turns `Trainer` into a link to its documentation) and between notebooks become relative
links to these pages, and every page gets a navigation bar (the overview, the chapters, the tutorials).

    python tools/build_docs.py [--out _docs]      (what `make docs` runs when `quarto` is not installed)
"""
import argparse, html, posixpath, re, shutil, sys
from pathlib import Path, PurePosixPath

import nbformat
import yaml
from nbconvert import HTMLExporter
from nbconvert.preprocessors import TagRemovePreprocessor
from nbdev.config import get_config
from nbdev.serve import proc_nbs

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / 'nbs'


def page_name(nb_rel:str) -> str:
    "The site path of a notebook, as Quarto names it: numeric prefixes dropped (`08_train.ipynb` -> `train.html`)."
    p = PurePosixPath(nb_rel)
    return str(p.with_name(re.sub(r'^\d+[a-z]?_', '', p.stem) + '.html'))


def clean(nb):
    """Drop the cell keys nbdev adds while processing, which the notebook schema does not allow; do what Quarto would with
    the directives it reads (`#| echo: false` hides a cell's code, other `#|` lines are not shown) and drop the Pandoc
    link attributes of `show_doc`'s source links, which only Quarto understands."""
    allowed = {'code': {'id', 'cell_type', 'metadata', 'source', 'outputs', 'execution_count'},
               'markdown': {'id', 'cell_type', 'metadata', 'source', 'attachments'}, 'raw': {'id', 'cell_type', 'metadata', 'source', 'attachments'}}
    for cell in nb.cells:
        for k in list(cell):
            if k not in allowed[cell.cell_type]: del cell[k]
        cell.metadata.pop('execution', None)  # nbdev's timings are numbers where the schema wants strings
        if cell.cell_type != 'code': continue
        if re.search(r'^#\|\s*echo:\s*false', cell.source, re.M): cell.metadata.setdefault('tags', []).append('remove_input')
        cell.source = '\n'.join(l for l in cell.source.splitlines() if not l.startswith('#|')).strip('\n')
        for out in cell.get('outputs', []):
            for mime, text in out.get('data', {}).items():
                if mime in ('text/markdown', 'text/html') and isinstance(text, str):
                    out['data'][mime] = re.sub(r'\{target="_blank"[^}]*\}', '', text)
    return nb


def site_pages() -> list[tuple[str, str]]:
    "(notebook path, section) in the order of the navigation: the overview, the chapters by number, then the tutorials."
    nbs = sorted(str(PurePosixPath(p.relative_to(NBS))) for p in NBS.rglob('*.ipynb') if '.ipynb_checkpoints' not in p.parts)
    chapters = [n for n in nbs if '/' not in n and n != 'index.ipynb']
    return ([('index.ipynb', 'Overview')] + [(n, 'Chapters') for n in chapters] +
            [(n, n.split('/')[0].capitalize()) for n in nbs if '/' in n])


def frontmatter_as_heading(nb) -> dict:
    "nbdev moves a notebook's title and summary into Quarto front matter; without Quarto they become a heading again."
    first = nb.cells[0] if nb.cells else None
    if first is None or first.cell_type != 'raw' or not first.source.startswith('---'): return {}
    fm = yaml.safe_load(first.source.strip().strip('-')) or {}
    text = f"# {fm.get('title', '')}" + (f"\n\n> {fm['description']}" if fm.get('description') else '')
    nb.cells[0] = nbformat.v4.new_markdown_cell(text)
    return fm


def relative(target:str, page:str) -> str:
    "The link from site page `page` to site page `target`."
    depth = len(PurePosixPath(page).parts) - 1
    return '../' * depth + target


def navigation(page:str, titles:dict[str, str]) -> str:
    links, section = [], None
    for nb_rel, sec in site_pages():
        target = page_name(nb_rel)
        if sec != section: links.append(f'<span class="llmlab-nav-section">{html.escape(sec)}</span>'); section = sec
        cls = ' class="llmlab-nav-current"' if target == page else ''
        links.append(f'<a{cls} href="{relative(target, page)}">{html.escape(titles.get(target, target))}</a>')
    style = ('<style>.llmlab-nav{font:14px system-ui,sans-serif;padding:8px 16px;border-bottom:1px solid #ddd;display:flex;'
             'flex-wrap:wrap;gap:4px 14px;background:#f7f7f9}.llmlab-nav a{text-decoration:none}.llmlab-nav-current{font-weight:bold}'
             '.llmlab-nav-section{color:#777;text-transform:uppercase;font-size:11px;align-self:center}</style>')
    return style + '<nav class="llmlab-nav">' + ' '.join(links) + '</nav>'


def rewrite_links(body:str, page:str, site_url:str, ids:dict[str, set[str]], names:dict[str, str]) -> tuple[str, list[str]]:
    "Site links and notebook links -> relative page links; anchors matched to the rendered ids (Quarto lowercases them)."
    dropped = []
    def fix(m):
        href = html.unescape(m.group(1))
        target, _, anchor = href.partition('#')
        if target.startswith(site_url + '/'): target = target[len(site_url) + 1:]
        elif target.endswith('.ipynb') and '://' not in target:
            base = posixpath.normpath(str(PurePosixPath(page).parent / target))   # 'tutorials/../02b_moe.ipynb' -> '02b_moe.ipynb'
            target = names.get(base, target)
        else: return m.group(0)
        if target not in ids: dropped.append(href); return m.group(0)
        if anchor:
            found = {i.lower(): i for i in ids[target]}.get(anchor.lower())
            if found is None: dropped.append(href); anchor = ''   # a symbol without a show_doc section: link the page
            else: anchor = found
        return f'href="{html.escape(relative(target, page) + ("#" + anchor if anchor else ""))}"'
    return re.sub(r'href="([^"]+)"', fix, body), dropped


def main(argv=None):
    ap = argparse.ArgumentParser(description='Build the documentation site into a folder of HTML pages.')
    ap.add_argument('--out', default=str(ROOT / get_config().doc_path.name), help='output folder (default: _docs)')
    a = ap.parse_args(argv)
    out = Path(a.out).resolve()
    cfg = get_config()
    site_url = (cfg.doc_host.rstrip('/') + '/' + cfg.doc_baseurl.strip('/')).rstrip('/')
    proc = Path(proc_nbs(path=str(NBS), n_workers=0))
    shutil.rmtree(out, ignore_errors=True)
    exporter = HTMLExporter(template_name='lab', exclude_input_prompt=True, exclude_output_prompt=True)
    exporter.register_preprocessor(TagRemovePreprocessor(remove_input_tags={'remove_input'}, enabled=True), enabled=True)
    pages = sorted(p for p in proc.rglob('*.ipynb') if '.ipynb_checkpoints' not in p.parts)
    rendered, titles, names = {}, {}, {}
    for nb_path in pages:
        rel = str(PurePosixPath(nb_path.relative_to(proc)))
        nb = clean(nbformat.read(nb_path, as_version=4))
        page, fm = page_name(rel), frontmatter_as_heading(nb)
        if fm.get('output-file') and fm['output-file'] != PurePosixPath(page).name:
            raise SystemExit(f"{rel}: nbdev names its page {fm['output-file']}, this script {page}: make page_name agree")
        names[rel], titles[page] = page, fm.get('title', page)
        rendered[page] = exporter.from_notebook_node(nb)[0]
    ids = {page: set(re.findall(r'\sid="([^"]+)"', body)) for page, body in rendered.items()}
    for page, body in rendered.items():
        body, dropped = rewrite_links(body, page, site_url, ids, names)
        body = re.sub(r'(<body[^>]*>)', lambda m: m.group(1) + navigation(page, titles), body, count=1)
        dest = out / page
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(body)
        note = f"  ({len(dropped)} links to symbols without their own section point at the page: {', '.join(sorted(set(dropped)))})" if dropped else ''
        print(f'{dest.relative_to(out.parent)}{note}')
    print(f'{len(rendered)} pages in {out} (open {out / "index.html"})')


if __name__ == '__main__':
    sys.exit(main())
