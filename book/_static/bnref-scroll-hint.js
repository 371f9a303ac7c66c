// A figure wider than its column scrolls sideways in its own box (bnref-book.css) so that its
// 10 pt labels keep their size on a phone; so does a printed table, whose columns wrapping
// would scramble. Phones hide scrollbars, so a box whose content does not fit gets the class
// bnref-scrolls, and the stylesheet writes a line under it saying so. Boxes are re-checked
// whenever their size changes (the theme's layout, web fonts, a rotated phone).
(function () {
  var BOXES = "article.bd-article div.cell_output, article.bd-article figure.bnref-slider";
  var PRINTOUTS = "article.bd-article div.cell_output pre";
  // a printout is a table when at least two of its lines have columns: text, 2+ spaces, text
  var COLUMNS = /\S {2,}\S/;
  function isTable(pre) {
    return pre.textContent.split("\n").filter(function (line) { return COLUMNS.test(line); }).length >= 2;
  }
  function mark(el) {
    if (el.tagName === "PRE") {
      // measured without the hint line, which changes the printout's own scroll width
      el.classList.remove("bnref-scrolls");
      el.classList.toggle("bnref-scrolls", el.scrollWidth > el.clientWidth + 1);
      return;
    }
    // the box's own figures, not other output in it (text, which wraps or scrolls itself)
    var figures = el.querySelectorAll(":scope > img, :scope > a > img");
    el.classList.toggle("bnref-scrolls", Array.prototype.some.call(figures, function (img) {
      return img.getBoundingClientRect().width > el.clientWidth + 1;
    }));
  }
  function start() {
    var observer = new ResizeObserver(function (entries) {
      entries.forEach(function (entry) { mark(entry.target); });
    });
    document.querySelectorAll(PRINTOUTS).forEach(function (pre) {
      pre.classList.toggle("bnref-table-output", isTable(pre));
    });
    document.querySelectorAll(BOXES + ", " + PRINTOUTS).forEach(function (el) {
      observer.observe(el);                       // also calls mark once, now
    });
    // a web font that arrives later changes the printouts' widths but not their boxes'
    var markAll = function () { document.querySelectorAll(BOXES + ", " + PRINTOUTS).forEach(mark); };
    document.fonts.ready.then(markAll);
    document.fonts.addEventListener("loadingdone", markAll);
    window.addEventListener("load", markAll);
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
