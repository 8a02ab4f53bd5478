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
4. `show_doc` renders with `TableRenderer`: nbdev's own markdown renderer (heading, source link), with the body
   laid out as nbdev's Quarto pages show it: the signature as written (`class` or `def`, wrapped), the docstring
   (without the numpy `Parameters` section that `help()` reads: the table shows the parameters), and a
   parameter table built by fastcore's `DocmentTbl` from the docments (name, type, default, details).
5. Test-only cells stay in the notebooks (nbdev-test runs them) but not on the pages: a code cell whose every
   statement is a `fastcore.test` check (`test_eq(...)`, `test_fail(...)`, ...), an `assert`, or a `for`/`if`/`with`
   block made only of those (see `is_test_cell`). Cells that also set things up or show something are examples and
   stay; `#| hide` hides any other cell, as in nbdev.
"""
import ast, inspect, os, re, sys, time, traceback
from contextlib import contextmanager
from pathlib import Path

from fastcore.basics import str2bool
from fastcore.nbio import read_nb, write_nb, mk_cell, nb_frontmatter, does_cell_eval, fm_default_eval
from fastcore.xtras import working_directory
from nbdev.config import get_config, nbpath2html
from nbdev.process import NBProcessor, Processor
from nbdev.processors import FilterDefaults, exec_show_docs, insert_warning
import fastcore.test, nbdev.showdoc
from fastcore.basics import ifnone
from fastcore.docments import MarkdownRenderer, DocmentTbl, DocmentText, docments, empty, _fmt_sig, _ital_first, _type_str
from nbdev.showdoc import BasicMarkdownRenderer

__all__ = ['find_notebooks', 'page_path', 'process_nb', 'nb_title', 'nb_to_gfm', 'build_one', 'skip_flags',
           'TableRenderer', 'is_test_cell']

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

# --- show_doc: signature, docstring, parameter table ----------------------------------------------------

_re_np_params = re.compile(r'^Parameters[ \t]*\n-{3,}[ \t]*$', re.M)  # the numpy section `help()` reads (fasterai_distill.core)

def _strip_param_section(doc):
    "`doc` without its numpy-style `Parameters` section and whatever follows it"
    m = _re_np_params.search(doc or '')
    return (doc[:m.start()] if m else doc or '').rstrip()

def _drop_inferred_annos(sym, dm):
    "fastcore's docments give an unannotated parameter the type of its default (`schedule=None` -> `NoneType`): keep only annotations written in the signature"
    try: sig = inspect.signature(sym)
    except (TypeError, ValueError): return dm
    for k, p in sig.parameters.items():
        if k in dm and p.annotation is empty: dm[k]['anno'] = empty
    if 'return' in dm and (inspect.isclass(sym) or sig.return_annotation is empty): dm['return']['anno'] = empty
    return dm

class _ParamTable(DocmentTbl):
    "fastcore's docments table, with the docment of `*args`/`**kwargs` on their own row (fastcore's default gives it to the return value)"
    def __init__(self, obj):
        super().__init__(obj)
        self.dm = docments(obj, full=True, args_kwargs=True)
        self.dm.pop('self', None)
        for d in self.dm.values(): d['docment'] = ifnone(d['docment'], empty)

class _SignatureTableBody(MarkdownRenderer):
    """The body of a `show_doc` entry: signature as written (no docment comments), docstring, parameter table"""
    sig_width = 72  # characters to a line in the site's code boxes (extra.css); longer signatures wrap, as black would

    def _sig(self):
        dt, sym = self.dm, self.sym
        _drop_inferred_annos(sym, dt.dm)
        prefix = 'class' if inspect.isclass(sym) else 'async def' if inspect.iscoroutinefunction(sym) else 'def'
        ret = dt.dm.get('return', {}).get('anno', empty)
        ret_str = f"){'->' + _type_str(ret) if ret is not empty else ''}:"
        params = [f for f, _ in dt.params]
        one_line = f"{prefix} {self.nm}({', '.join(params)}{ret_str}"
        if len(one_line) <= self.sig_width: return one_line
        # _fmt_sig's line length leaves out the 4-space indent and the ', ' + ',' it adds around the last parameter
        return _fmt_sig(self.nm, [(f, None) for f in params], ret_str, self.sig_width - 7, prefix=prefix)

    def _repr_markdown_(self):
        self.docs = _strip_param_section(self.docs)
        if not isinstance(self.dm, DocmentText): return super()._repr_markdown_()  # no signature to read: nbdev's own layout
        doc = f'```python\n{self._sig()}\n```'
        if self.docs: doc += f'\n\n{_ital_first(self.docs)}'
        try: tbl = _ParamTable(self.sym)
        except Exception: return doc
        _drop_inferred_annos(self.sym, tbl.dm)
        return doc + (f'\n\n{tbl._repr_markdown_()}' if tbl.has_docment else '')

class TableRenderer(BasicMarkdownRenderer, _SignatureTableBody):
    "`show_doc` renderer for the docs pages: nbdev's `BasicMarkdownRenderer` (heading, source link) with `_SignatureTableBody`"

@contextmanager
def _table_show_doc():
    "Make `show_doc` (which looks its default renderer up in `nbdev.showdoc` at each call) render with `TableRenderer`"
    prev = nbdev.showdoc.BasicMarkdownRenderer
    nbdev.showdoc.BasicMarkdownRenderer = TableRenderer
    try: yield
    finally: nbdev.showdoc.BasicMarkdownRenderer = prev

# --- test-only cells -----------------------------------------------------------------------------------

_TEST_NAMES = frozenset(n for n in fastcore.test.__all__ if callable(getattr(fastcore.test, n)))

def _is_check(node):
    "A statement that only checks: a fastcore.test call, an `assert`, or a `for`/`if`/`with` made only of checks"
    if isinstance(node, ast.Assert): return True
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
        f = node.value.func
        return isinstance(f, ast.Name) and f.id in _TEST_NAMES
    if isinstance(node, (ast.For, ast.If)): return all(map(_is_check, node.body + node.orelse))
    if isinstance(node, ast.With):
        ctx = [i.context_expr for i in node.items]
        if all(isinstance(c, ast.Call) and isinstance(c.func, ast.Name) and c.func.id in _TEST_NAMES for c in ctx): return True
        return all(map(_is_check, node.body))
    return False

def is_test_cell(source):
    "Whether a code cell only checks things: every statement is a `fastcore.test` call or an `assert` (imports aside)"
    code = '\n'.join(l for l in source.splitlines() if not re.match(r'\s*#\|', l))
    try: body = ast.parse(code).body
    except SyntaxError: return False  # magics and the like
    checks = [_is_check(n) for n in body if not isinstance(n, (ast.Import, ast.ImportFrom))]
    return bool(checks) and all(checks)

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
        if is_test_cell(cell.source): continue  # kept in the notebook, run by the tests
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
    try:
        with _table_show_doc(): NBProcessor(nb=nb, procs=_procs(execute, flags, timeout), rm_directives='quarto').process()
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
    """One output as GitHub markdown: markdown/html kept, plain text fenced, images dropped (they would bloat the README),
    stderr dropped (library warnings, with this machine's paths in them: the README would differ from one venv to the next)"""
    ot = o.get('output_type')
    if ot == 'stream' and o.get('name') == 'stderr': return ''
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
