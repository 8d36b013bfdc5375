// Render the math that pymdownx.arithmatex (generic mode) leaves in \( \) and \[ \] spans, with the bundled KaTeX.
document$.subscribe(() => {
  renderMathInElement(document.body, {
    delimiters: [
      { left: "\\(", right: "\\)", display: false },
      { left: "\\[", right: "\\]", display: true },
    ],
    throwOnError: false,
  });
});
