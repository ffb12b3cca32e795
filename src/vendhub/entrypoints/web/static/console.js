// vendhub console: the fleet board follows /api/fleet/events (SSE) without reloading.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!window.EventSource || !document.querySelector("[data-machine]")) { return; }
  function when(iso) {
    if (!iso || iso === "None") { return "–"; }
    var d = new Date(iso.replace(" ", "T"));
    if (isNaN(d)) { return iso; }
    var f = new Intl.DateTimeFormat("sv-SE", { timeZone: document.body.dataset.tz || undefined,
      year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit" });
    return f.format(d);
  }
  function set(el, field, text) {
    var node = el.querySelector('[data-field="' + field + '"]');
    if (node && node.textContent !== text) {
      node.textContent = text;
      node.classList.remove("flash-change"); void node.offsetWidth; node.classList.add("flash-change");
    }
    return node;
  }
  var source = new EventSource("/api/fleet/events");
  source.onopen = function () { if (live) { live.classList.add("on"); } };
  source.onerror = function () { if (live) { live.classList.remove("on"); } };
  source.addEventListener("fleet", function (e) {
    JSON.parse(e.data).forEach(function (m) {
      document.querySelectorAll('[data-machine="' + CSS.escape(m.id) + '"]').forEach(function (el) {
        var pill = set(el, "status", m.status);
        if (pill) { pill.className = "pill " + m.status.toLowerCase(); }
        set(el, "last_seen_at", when(m.last_seen_at));
        set(el, "temperature", m.temperature == null ? "–" : m.temperature.toFixed(1) + " °C");
        var low = el.tagName === "TR" ? String(m.low_stock) : m.low_stock + " slot(s)";
        set(el, "low_stock", low);
        set(el, "open_alerts", String(m.open_alerts));
      });
    });
  });
})();
