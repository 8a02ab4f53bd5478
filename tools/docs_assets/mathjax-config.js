// MathJax 3 (served locally from assets/mathjax, copied from the django-static-mathjax wheel by build_docs).
// Notebook markdown keeps $...$ / $$...$$ as written; Markdown pages use pymdownx.arithmatex (\(...\), \[...\]).
window.MathJax = {
  tex: {
    inlineMath: [['$', '$'], ['\\(', '\\)']],
    displayMath: [['$$', '$$'], ['\\[', '\\]']],
    processEscapes: true,
    processEnvironments: true
  },
  options: {
    skipHtmlTags: ['script', 'noscript', 'style', 'textarea', 'pre', 'code'],
    ignoreHtmlClass: 'highlight-ipynb|md-search|md-nav|md-header'
  },
  chtml: { displayAlign: 'center' }
};
