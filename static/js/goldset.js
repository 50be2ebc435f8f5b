// Page behaviour that the Content-Security-Policy keeps out of the HTML: no inline scripts, event
// handler attributes or style attributes. Values a style needs come as data attributes and are set
// here through the CSSOM, which the policy allows.
(function () {
  "use strict";

  function applyData(root) {
    root.querySelectorAll("[data-width]").forEach(function (el) {
      el.style.width = Math.max(0, Math.min(100, parseFloat(el.dataset.width) || 0)) + "%";
    });
    root.querySelectorAll("[data-responses]").forEach(function (el) {
      el.style.setProperty("--responses", String(parseInt(el.dataset.responses, 10) || 1));
    });
  }

  // After a "More records" button has loaded its rows, its own row goes.
  document.addEventListener("htmx:afterRequest", function (event) {
    var el = event.detail && event.detail.elt;
    if (el && el.matches && el.matches("[data-remove-row-after-request]") && event.detail.successful) {
      var row = el.closest("tr");
      if (row) row.remove();
    }
  });

  if (window.htmx) {
    window.htmx.onLoad(function (el) { applyData(el.querySelectorAll ? el : document); });
  }
  document.addEventListener("DOMContentLoaded", function () { applyData(document); });
})();
