"""MkDocs hooks for the notebook pages rendered by mkdocs-jupyter (see `tools/build_docs`).

- Heading ids: nbconvert ids keep case and punctuation (`Soft-targets`) while mkdocs-jupyter's table of
  contents uses Python-Markdown slugs, so TOC links missed. Ids are rewritten Quarto/nbdev style
  (`softtarget`, `attention.__call__`), which is also what nbdev's doc links point at, and the page TOC is
  rebuilt from the headings actually on the page.
- Links into the published docs site (nbdev's `add_links` writes absolute `doc_host` URLs) become relative,
  so the local site navigates offline.
- nbconvert's MathJax 2 loader (a CDN URL, or an empty `src`) is removed: the site loads its own MathJax 3
  from `assets/mathjax` (see `extra_javascript` in mkdocs.yml).
"""
import html, posixpath, re
from mkdocs.structure.toc import get_toc

TOC_DEPTH = 3  # page TOC lists h1-h3 (h1 is the title, which Material leaves out)
_re_head = re.compile(r'<h([1-6])([^>]*?)\s+id="([^"]*)"([^>]*)>(.*?)</h\1>', re.S)
_re_tag = re.compile(r'<[^>]+>')
_re_src = re.compile(r'<a [^>]*class="nbdev-source"[^>]*>.*?</a>', re.S)  # show_doc's source link, inside API headings
_re_mj = re.compile(r'<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->', re.S)

_re_nblink = re.compile(r'href="((?![a-z][a-z0-9+.-]*:)[^"#?]+?\.ipynb)(#[^"]*)?"')

def _nb2html(path):
    "nbdev's page name for a notebook path: `../01_schedule.ipynb` -> `../schedule.html`"
    d, _, name = path.rpartition('/')
    name = re.sub(r'^\d+[a-zA-Z0-9]*_', '', name.lower())[:-len('.ipynb')] + '.html'
    return f'{d}/{name}' if d else name

def _slug(text):
    "Pandoc/Quarto-style id: lowercase, keep word chars `.` `_` `-`, spaces to `-`"
    s = re.sub(r'[^\w\s.\-]', '', text.strip().lower())
    return re.sub(r'\s+', '-', s).strip('-') or 'section'

def _nest(flat):
    "Nest flat (level, id, name) headings into MkDocs TOC tokens"
    root = {'level': 0, 'children': []}
    stack = [root]
    for lvl, id_, name in flat:
        tok = {'level': lvl, 'id': id_, 'name': name, 'children': []}
        while stack[-1]['level'] >= lvl: stack.pop()
        stack[-1]['children'].append(tok)
        stack.append(tok)
    return root['children']

def on_page_content(content, page, config, files):
    if not page.file.src_path.endswith('.ipynb'): return content
    content = _re_mj.sub('', content)
    heads = list(_re_head.finditer(content))
    texts = [html.unescape(_re_tag.sub('', _re_src.sub('', m.group(5)).replace('¶', ''))).strip() for m in heads]
    is_doc = ['nbdev-doc' in m.group(5) for m in heads]
    # API entries (show_doc headings) claim the plain slug first: nbdev's doc links point at them
    ids, seen = [None]*len(heads), set()
    for i in sorted(range(len(heads)), key=lambda i: not is_doc[i]):
        new = base = _slug(texts[i])
        n = 0
        while new in seen: n += 1; new = f'{base}-{n}'
        seen.add(new); ids[i] = new
    out, pos, flat, renames = [], 0, [], {}
    for i, m in enumerate(heads):
        lvl, pre, old, post, inner = m.groups()
        renames[old] = ids[i]
        inner = inner.replace(f'href="#{old}"', f'href="#{ids[i]}"')
        cls = ' class="nbdev-doc-heading"' if is_doc[i] and 'class=' not in pre + post else ''
        out += [content[pos:m.start()], f'<h{lvl}{pre} id="{ids[i]}"{cls}{post}>{inner}</h{lvl}>']
        pos = m.end()
        # TOC: h1-h3; an API entry right under a section of the same name is not listed twice
        if int(lvl) <= TOC_DEPTH and not (is_doc[i] and flat and flat[-1][2] == html.escape(texts[i])):
            flat.append((int(lvl), ids[i], html.escape(texts[i])))
    content = ''.join(out) + content[pos:]
    for old, new in renames.items():  # in-page links written against nbconvert's ids
        if old != new: content = content.replace(f'href="#{old}"', f'href="#{new}"')
    page.toc = get_toc(_nest(flat))

    # links to notebooks, as authors write them in nbs/, point at their pages (as Quarto does)
    content = _re_nblink.sub(lambda m: f'href="{_nb2html(m.group(1))}{m.group(2) or ""}"', content)

    site = (config.get('site_url') or '').rstrip('/') + '/'
    if site != '/':
        here = posixpath.dirname(page.file.url)
        def _rel(m):
            target = m.group(2)
            path, frag = (target.split('#', 1) + [''])[:2]
            rel = posixpath.relpath(path or 'index.html', here or '.')
            return f'{m.group(1)}{rel}{"#"+frag if frag else ""}"'
        content = re.sub(r'(href=")' + re.escape(site) + r'([^"]*)"', _rel, content)
    return content
