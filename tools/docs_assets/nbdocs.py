"""Offline notebook -> docs pipeline shared by `tools/build_docs` and `tools/sync_readme`.

Quarto cannot be installed everywhere, so this reproduces the part of `nbdev-proc-nbs` + Quarto that
the docs need, reusing nbdev's own doc processors (`FilterDefaults`):

1. nbdev processing: frontmatter from the `# Title` / `> description` cell, `show_doc` added after
   exported cells, `#| hide` and `#| export` cells dropped, directives removed, backticked names linked.
2. Execution: nbdev only runs the cells `show_doc` needs (notebooks normally keep their outputs); ours are
   stored without outputs, so `ExecAll` runs every cell nbdev-test would run (same skip flags, `eval: false`
   honoured, `IN_TEST=1`, notebook folder as working directory) before hidden cells are dropped.
3. The Quarto cell options that survive nbdev (`echo`, `output`, `include`, `code-fold`, ...) are applied
   here, since no Quarto runs afterwards.
"""
import os, re, sys, time, traceback
from pathlib import Path

from fastcore.basics import str2bool
from fastcore.nbio import read_nb, write_nb, mk_cell, nb_frontmatter, does_cell_eval, fm_default_eval
from fastcore.xtras import working_directory
from nbdev.config import get_config, nbpath2html
from nbdev.process import NBProcessor, Processor
from nbdev.processors import FilterDefaults, exec_show_docs, insert_warning

__all__ = ['find_notebooks', 'page_path', 'process_nb', 'nb_title', 'nb_to_gfm', 'build_one', 'skip_flags']

def skip_flags(cfg=None):
    "nbdev-test's skip flags (`tst_flags` in pyproject), e.g. `{'notest','slow','cuda'}`"
    fl = (cfg or get_config()).get('tst_flags', '') or ''
    return set(fl.split() if isinstance(fl, str) else fl)

def find_notebooks(nbs_path):
    "All notebooks under `nbs_path`, as nbdev finds them (names/folders starting with `_` or `.` skipped), sorted"
    nbs_path = Path(nbs_path)
    res = []
    for p in sorted(nbs_path.rglob('*.ipynb')):
        rel = p.relative_to(nbs_path)
        if any(o.startswith(('_', '.')) for o in rel.parts): continue
        res.append(p)
    return res

def page_path(nb_path, nbs_path):
    "Page path of a notebook relative to the site root, named as nbdev/Quarto name it (`00_losses.ipynb` -> `losses.html`)"
    return nbpath2html(Path(nb_path).relative_to(nbs_path)).as_posix()

class ExecAll(Processor):
    "Execute every cell nbdev-test would run, storing outputs in the cells (replaces nbdev's `exec_show_docs`)"
    flags,timeout = (),None

    def begin(self):
        from execnb.shell import CaptureShell
        self.fm = nb_frontmatter(self.nb)
        self.dflt = fm_default_eval(self.fm)
        self.skip_all = str2bool(self.fm.get('skip_exec', False))
        self.src = Path(self.nb.path_).absolute()
        self.k = CaptureShell(self.src)
        self.k.run_cell('from nbdev.showdoc import show_doc')

    def _skip(self, cell):
        if self.skip_all or cell.cell_type != 'code' or not cell.source.strip(): return True
        if 'nbdev_export'+'(' in cell.source: return True
        if not does_cell_eval(cell, self.dflt): return True
        return bool(set(self.flags) & set(getattr(cell, 'directives_', {}) or {}))

    def __call__(self, cell):
        if self._skip(cell): return
        with working_directory(self.src.parent): self.k.cell(cell, timeout=self.timeout)
        if self.k.exc is not None:
            tb = self.k.prettytb(fname=self.src) or ''.join(traceback.format_exception(self.k.exc))
            raise RuntimeError(f"{self.src.name}: cell {cell.idx_} failed\n{tb}")

    def end(self):
        import matplotlib.pyplot as plt
        plt.close('all')

def _procs(execute, flags, timeout):
    "nbdev's doc processors, with `exec_show_docs` replaced by `ExecAll` when `execute`"
    procs = list(FilterDefaults().procs())
    if execute:
        i = procs.index(exec_show_docs)
        procs[i] = type('ExecAll', (ExecAll,), dict(flags=set(flags), timeout=timeout))  # nbdev instantiates types with `nb`
    return procs

_re_opt = re.compile(r'^\s*#\|\s*([\w-]+)\s*:?\s*(.*?)\s*$')

def _cell_opts(cell):
    "Split leading `#| key: value` lines off `cell.source`, returning them as a dict"
    lines = cell.source.splitlines(True)
    opts = {}
    while lines and (m := _re_opt.match(lines[0])):
        opts[m.group(1)] = m.group(2).strip('"\'')
        lines.pop(0)
    cell.source = ''.join(lines).strip('\n')
    return opts

def _false(v): return str(v).lower() == 'false'

def _md_output(cell):
    "Markdown of a cell whose only outputs are `text/markdown` (e.g. `show_doc`), else None"
    outs = cell.get('outputs', [])
    if not outs or any('text/markdown' not in o.get('data', {}) for o in outs): return None
    return '\n\n'.join(''.join(o['data']['text/markdown']) for o in outs)

_re_attr_link = re.compile(r'\[([^\]]+)\]\(([^)\s]+)\)\{([^}]*)\}')
_re_callout = re.compile(r'^:::+\s*\{\s*\.callout-(\w+)([^}]*)\}[ \t]*\n(.*?)\n:::+[ \t]*$', re.M | re.S)
_admonition = {'note': 'note', 'tip': 'tip', 'important': 'info', 'warning': 'warning', 'caution': 'danger'}  # Quarto -> Material; GitHub alerts use the Quarto names

def _quarto_md(md, gfm=False):
    "Quarto markdown that neither mistune nor GitHub knows: `[text](url){attrs}` links (show_doc's source link) and callouts"
    def _link(m):
        text, url, _ = m.groups()
        return f'[{text}]({url})' if gfm else f'<a href="{url}" class="nbdev-source" target="_blank">{text}</a>'
    def _callout(m):
        kind, attrs, body = m.groups()
        t = re.search(r'title\s*=\s*"([^"]*)"', attrs)
        h = re.match(r'\s*#{1,6}\s+(.+)\n', body)
        title = t.group(1) if t else h.group(1) if h else kind.capitalize()
        if h and not t: body = body[h.end():]
        body = body.strip('\n')
        if gfm: return f'> [!{kind.upper() if kind in _admonition else "NOTE"}]\n' + '\n'.join(f'> {l}'.rstrip() for l in body.splitlines())
        return f'<div class="admonition {_admonition.get(kind, "note")}">\n<p class="admonition-title">{title}</p>\n\n{body}\n\n</div>'
    return _re_callout.sub(_callout, _re_attr_link.sub(_link, md))

def _doc_md(md, gfm=False):
    """show_doc markdown: escape `_` in the heading (`__call__` would turn bold); for the site, mark the heading as an
    API entry and move show_doc's `[source](url){...}` link into it"""
    src = None
    if not gfm and (m := _re_attr_link.search(md)) and m.group(1) == 'source':
        src, md = m.group(2), md[:m.start()] + md[m.end():]
    def f(m):
        h = re.sub(r'(?<!\\)_', r'\\_', m.group(0))
        if gfm: return h
        return h + ' <span class="nbdev-doc"></span>' + (f'<a href="{src}" class="nbdev-source" target="_blank">source</a>' if src else '')
    return _quarto_md(re.sub(r'^#{1,6} .*$', f, md, count=1, flags=re.M), gfm)

def _fix_cr(text):
    "Stream text as a terminal shows it: a `\\r` rewinds the line (console progress bars keep only their final state)"
    text = ''.join(text) if isinstance(text, list) else text
    return '\n'.join(l.rstrip('\r').rsplit('\r', 1)[-1] for l in text.split('\n'))

def _finish(nb, gfm=False):
    """Apply the Quarto cell options nbdev leaves for Quarto, and turn the frontmatter into a title cell.
    `show_doc` cells (input hidden, markdown output) become markdown cells, so their headings are real page
    headings (table of contents, anchors) and their math is typeset like the prose."""
    fm = dict(getattr(nb, 'frontmatter_', {}) or {})
    cells = []
    for cell in nb.cells:
        if cell.cell_type == 'raw' and cell.source.lstrip().startswith('---'): continue  # nbdev's frontmatter cell
        if cell.cell_type != 'code':
            if cell.cell_type == 'markdown': cell.source = _quarto_md(cell.source, gfm)
            if cell.source.strip() and cell.source.strip() != insert_warning.content: cells.append(cell)
            continue
        opts = _cell_opts(cell)
        if _false(opts.get('include', 'true')): continue
        if _false(opts.get('output', 'true')): cell.outputs = []
        if opts.get('output') == 'asis':
            for o in cell.get('outputs', []):
                if o.get('output_type') == 'stream' and o.get('name') == 'stdout':
                    txt = ''.join(o['text']) if isinstance(o['text'], list) else o['text']
                    o.clear(); o.update(output_type='display_data', metadata={}, data={'text/markdown': txt})
        if _false(opts.get('echo', 'true')):
            md = _md_output(cell)
            if md is not None:
                cells.append(mk_cell(_doc_md(md, gfm) if 'show_doc' in cell.source else _quarto_md(md, gfm), 'markdown'))
                continue
            cell.source = ''
        for o in cell.get('outputs', []):
            if o.get('output_type') == 'stream': o['text'] = _fix_cr(o['text'])
        if not cell.source.strip() and not cell.get('outputs'): continue
        if not cell.source.strip(): cell.setdefault('metadata', {})['transient'] = {'remove_source': True}
        cells.append(cell)
    head = []
    if fm.get('title'):
        src = f"# {fm['title']}"
        if fm.get('description'): src += f"\n\n> {fm['description']}"
        head.append(mk_cell(src, 'markdown'))
    nb.cells = head + cells
    for c in nb.cells:  # drop the processors' scratch attributes and run timings (not valid nbformat) before writing
        for k in [k for k in c if k.endswith('_')]: del c[k]
        c.get('metadata', {}).pop('execution', None)
    return nb

def process_nb(src, execute=True, flags=None, timeout=None, gfm=False):
    "Read `src` and return it processed like nbdev's docs (executed unless not `execute`), ready to render (`gfm`: for GitHub)"
    cfg = get_config()
    if flags is None: flags = skip_flags(cfg)
    if timeout is None: timeout = cfg.get('cell_timeout', None)
    timeout = int(timeout) if timeout else None
    nb = read_nb(src)
    prev = os.environ.get('IN_TEST')
    os.environ['IN_TEST'] = '1'
    try: NBProcessor(nb=nb, procs=_procs(execute, flags, timeout), rm_directives='quarto').process()
    finally:
        if prev is None: os.environ.pop('IN_TEST', None)
        else: os.environ['IN_TEST'] = prev
    return _finish(nb, gfm)

def nb_title(nb, default=''):
    "Title of a processed notebook: its first `# heading`"
    for c in nb.cells:
        if c.cell_type == 'markdown' and (m := re.search(r'^#\s+(.+?)\s*$', c.source, re.M)): return m.group(1)
    return default

def build_one(src, dst, execute=True, cwd=None):
    "Worker: process notebook `src` and write it to `dst`; returns (src, ok, seconds, title, error text)"
    t0 = time.perf_counter()
    if cwd: os.chdir(cwd)
    try:
        nb = process_nb(src, execute=execute)
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
        write_nb(nb, dst)
        return str(src), True, time.perf_counter()-t0, nb_title(nb, Path(src).stem), ''
    except Exception as e:
        msg = str(e) if isinstance(e, RuntimeError) else traceback.format_exc()
        return str(src), False, time.perf_counter()-t0, '', msg

# --- GitHub-flavoured markdown (README) ---------------------------------------------------------------

def _text(x): return ''.join(x) if isinstance(x, list) else (x or '')

def _out_md(o):
    "One output as GitHub markdown: markdown/html kept, plain text fenced, images dropped (they would bloat the README)"
    ot = o.get('output_type')
    if ot == 'stream': return '```\n' + _text(o.get('text')).rstrip('\n') + '\n```'
    if ot == 'error': return '```\n' + '\n'.join(o.get('traceback', [])) + '\n```'
    d = o.get('data', {})
    if 'text/markdown' in d: return _text(d['text/markdown']).strip('\n')
    if 'text/html' in d: return _text(d['text/html']).strip('\n')
    if 'text/plain' in d: return '```\n' + _text(d['text/plain']).rstrip('\n') + '\n```'
    return ''

def nb_to_gfm(nb):
    "Processed notebook as GitHub markdown: markdown cells as is, code as ```python blocks, text outputs as ``` blocks"
    parts = []
    for c in nb.cells:
        if c.cell_type == 'markdown': parts.append(c.source.strip('\n'))
        elif c.cell_type == 'code':
            if c.source.strip() and not c.get('metadata', {}).get('transient', {}).get('remove_source'):
                parts.append('```python\n' + c.source.strip('\n') + '\n```')
            parts += [s for s in map(_out_md, c.get('outputs', [])) if s]
    md = '\n\n'.join(p for p in parts if p.strip())
    md = re.sub(r'[ \t]+$', '', md, flags=re.M)  # no trailing spaces: stable diffs
    return md.rstrip('\n') + '\n'
