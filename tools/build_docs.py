"""Build the documentation site without Quarto: nbdev processes the notebooks (show_doc, hidden cells, directives),
then nbconvert renders each as HTML into _docs/, with links between chapters pointing at the HTML pages.

    python tools/build_docs.py      (what `make docs` runs when `quarto` is not installed)
"""
import re, shutil, sys
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter
from nbdev.serve import proc_nbs

ROOT = Path(__file__).resolve().parents[1]


def clean(nb):
    "Drop the cell keys nbdev adds while processing, which the notebook schema does not allow."
    allowed = {'code': {'id', 'cell_type', 'metadata', 'source', 'outputs', 'execution_count'},
               'markdown': {'id', 'cell_type', 'metadata', 'source', 'attachments'}, 'raw': {'id', 'cell_type', 'metadata', 'source', 'attachments'}}
    for cell in nb.cells:
        for k in list(cell):
            if k not in allowed[cell.cell_type]: del cell[k]
        cell.metadata.pop('execution', None)  # nbdev's timings are numbers where the schema wants strings
    return nb


def main():
    proc = Path(proc_nbs(path=str(ROOT / 'nbs'), n_workers=0))
    out = ROOT / '_docs'
    shutil.rmtree(out, ignore_errors=True)
    exporter = HTMLExporter(template_name='lab')
    pages = sorted(p for p in proc.rglob('*.ipynb') if '.ipynb_checkpoints' not in p.parts)
    for nb_path in pages:
        nb = clean(nbformat.read(nb_path, as_version=4))
        html, _ = exporter.from_notebook_node(nb)
        html = re.sub(r'href="([^"#:]+)\.ipynb', r'href="\1.html', html)  # chapter links
        dest = out / nb_path.relative_to(proc).with_suffix('.html')
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(html)
        print(f'{dest.relative_to(ROOT)}')
    print(f'{len(pages)} pages in {out.relative_to(ROOT)}/ (open {(out / "index.html").relative_to(ROOT)})')


if __name__ == '__main__':
    sys.exit(main())
