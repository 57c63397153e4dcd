// Applies the chosen theme before the page paints (the choice is only a preference: no secret).
(function () {
  var saved = null;
  try { saved = window.localStorage.getItem("vigil-theme"); } catch (e) { /* private mode */ }
  var light = window.matchMedia && window.matchMedia("(prefers-color-scheme: light)").matches;
  document.documentElement.setAttribute("data-theme", saved || (light ? "light" : "dark"));
})();
