// Keeps the flowchart live: re-fetches its SVG every few seconds while the page is visible.
(function () {
  "use strict";
  var box = document.getElementById("flowchart");
  if (!box) return;
  var state = document.getElementById("live-state");
  var every = parseInt(box.getAttribute("data-refresh"), 10) || 3000;
  function refresh() {
    if (document.hidden) return;
    fetch(box.getAttribute("data-src"), { credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (!response.ok) throw new Error(response.status);
        return response.text();
      })
      .then(function (svg) {
        box.innerHTML = svg;
        box.setAttribute("data-updated", new Date().toISOString());
        if (state) { state.textContent = "live · " + new Date().toLocaleTimeString(); }
      })
      .catch(function () {
        if (state) { state.textContent = "not updating (signed out or offline?)"; }
      });
  }
  setInterval(refresh, every);
})();
