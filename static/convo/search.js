/* Convo search (issue 11): keyboard moves through the sidebar's search results, and a chat page opened
   from a result (?at=<seq>) scrolls to that message and highlights it. */
(function () {
  "use strict";

  function links() { return Array.prototype.slice.call(document.querySelectorAll("#search-results .search-hit-link, #search-results .search-more a")); }

  function clear(box) {
    box.value = "";
    var results = document.getElementById("search-results");
    if (results) results.innerHTML = "";
    box.focus();
  }

  // ↓ from the box to the first result, ↑/↓ between results (↑ from the first: back to the box),
  // Escape clears the search and returns to the box.
  document.addEventListener("keydown", function (e) {
    var t = e.target;
    var box = document.getElementById("search-q");
    if (!box || !t) return;
    var inResults = t.closest && t.closest("#search-results");
    if (t !== box && !inResults) return;
    if (e.key === "Escape") {
      e.preventDefault();
      clear(box);
      return;
    }
    if (e.key !== "ArrowDown" && e.key !== "ArrowUp") return;
    var all = links();
    if (!all.length) return;
    var i = all.indexOf(t);
    var next = null;
    if (t === box) next = e.key === "ArrowDown" ? all[0] : null;
    else if (e.key === "ArrowDown") next = all[Math.min(i + 1, all.length - 1)];
    else next = i > 0 ? all[i - 1] : box;
    if (next) {
      e.preventDefault();
      next.focus();
    }
  });

  // The message a search result points at: scroll it into the middle of the pane and mark it.
  function showTarget() {
    var at = new URLSearchParams(window.location.search).get("at");
    if (!at || !/^\d+$/.test(at)) return;
    var target = document.getElementById("msg-" + at);
    if (!target) return;
    target.classList.add("search-target");
    target.setAttribute("tabindex", "-1");
    target.setAttribute("aria-current", "true");
    target.scrollIntoView({ block: "center" });
    target.focus({ preventScroll: true });
  }
  document.addEventListener("DOMContentLoaded", showTarget); // after app.js's own (it scrolls to the end)
})();
