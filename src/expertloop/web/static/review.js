// Grid review: click an image the model got wrong to flip it (choose its label
// below it); "Accept" saves the page: flipped images with the chosen label, the
// rest with the predicted one. The time on the page is shared among its images.
(function () {
  "use strict";
  const started = performance.now();
  document.querySelectorAll("#grid .cell").forEach(function (cell) {
    const select = cell.querySelector("select");
    cell.querySelector("img").addEventListener("click", function () {
      const wrong = !cell.classList.contains("wrong");
      cell.classList.toggle("wrong", wrong);
      select.disabled = !wrong;
    });
  });
  const form = document.getElementById("review-form");
  if (form) {
    form.addEventListener("submit", function () {
      document.getElementById("elapsed").value = ((performance.now() - started) / 1000).toFixed(3);
    });
  }
})();
