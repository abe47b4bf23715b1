/* Convo's colour theme, applied before the first paint: "light" or "dark" when the user chose one
   with the toggle (remembered in localStorage), else the system's (prefers-color-scheme, in CSS). */
(function () {
  "use strict";
  try {
    var theme = window.localStorage.getItem("convo-theme");
    if (theme === "light" || theme === "dark") document.documentElement.setAttribute("data-theme", theme);
  } catch (err) { /* storage unavailable: follow the system */ }
})();
