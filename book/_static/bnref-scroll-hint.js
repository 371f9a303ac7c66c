// A figure wider than its column scrolls sideways in its own box (bnref-book.css) so that its
// 10 pt labels keep their size on a phone. Phones hide scrollbars, so a box whose figure does
// not fit gets the class bnref-scrolls, and the stylesheet writes a line under it saying so.
(function () {
  var BOXES = "article.bd-article div.cell_output, article.bd-article figure.bnref-slider";
  function mark() {
    document.querySelectorAll(BOXES).forEach(function (box) {
      // the box's own figures, not other wide output in it (text, which scrolls by itself)
      var figures = box.querySelectorAll(":scope > img, :scope > a > img");
      var wide = Array.prototype.some.call(figures, function (img) {
        return img.getBoundingClientRect().width > box.clientWidth + 1;
      });
      box.classList.toggle("bnref-scrolls", wide);
    });
  }
  window.addEventListener("load", mark);
  window.addEventListener("resize", mark);
})();
