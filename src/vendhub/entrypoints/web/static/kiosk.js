// vendhub kiosk: the cart lives in the page; the order's state comes only from the server (SSE).
(function () {
  "use strict";
  var body = document.body;
  var machine = body.dataset.machine;
  var lang = body.dataset.lang;
  var T = JSON.parse(document.getElementById("texts").textContent);
  var IDLE_MS = 60000;      // an untouched cart is cleared after this
  var RESULT_MS = 20000;    // success/refund/expired screens go back to the grid after this
  var cart = {};            // slot -> {name, price, qty, available}
  var order = null;         // {id, expires}
  var stream = null, countdown = null, idle = null, back = null;
  if (!document.getElementById("shop")) {
    setTimeout(function () { location.reload(); }, 30000);
    return;
  }

  function rp(n) { return "Rp " + String(Math.round(n)).replace(/\B(?=(\d{3})+(?!\d))/g, "."); }
  function $(id) { return document.getElementById(id); }
  function show(id) {
    ["shop", "pay", "progress", "done", "refunded", "closed"].forEach(function (s) {
      $(s).hidden = s !== id;
    });
    $("error").hidden = true;
  }
  function touch() {
    clearTimeout(idle);
    idle = setTimeout(function () { if (!order) { reset(); } }, IDLE_MS);
  }
  function reset() { cart = {}; order = null; location.href = location.pathname + "?lang=" + lang; }

  function renderCart() {
    var lines = $("cart-lines"), total = 0, count = 0;
    lines.innerHTML = "";
    Object.keys(cart).forEach(function (slot) {
      var c = cart[slot];
      total += c.price * c.qty; count += c.qty;
      var li = document.createElement("li");
      li.innerHTML = '<span class="q"></span><span class="n"></span><span class="p"></span>' +
        '<button type="button" class="minus" aria-label="-">−</button>' +
        '<button type="button" class="plus" aria-label="+">+</button>';
      li.querySelector(".q").textContent = c.qty + "×";
      li.querySelector(".n").textContent = c.name;
      li.querySelector(".p").textContent = rp(c.price * c.qty);
      li.querySelector(".minus").onclick = function () { change(slot, -1); };
      li.querySelector(".plus").onclick = function () { change(slot, 1); };
      lines.appendChild(li);
    });
    document.querySelectorAll(".k-tile").forEach(function (tile) {
      var c = cart[tile.dataset.slot], badge = tile.querySelector(".k-count");
      badge.hidden = !c; badge.textContent = c ? c.qty : "";
      tile.classList.toggle("in-cart", !!c);
    });
    $("cart-total").textContent = rp(total);
    $("cart-empty").hidden = count > 0;
    $("checkout").hidden = count === 0;
    $("clear").hidden = count === 0;
  }
  function change(slot, delta) {
    var c = cart[slot];
    if (!c) { return; }
    c.qty = Math.min(c.available, c.qty + delta);
    if (c.qty <= 0) { delete cart[slot]; }
    renderCart(); touch();
  }
  document.querySelectorAll(".k-tile").forEach(function (tile) {
    tile.addEventListener("click", function () {
      var slot = tile.dataset.slot, available = parseInt(tile.dataset.available, 10);
      if (tile.disabled || available <= 0) { return; }
      if (!cart[slot]) {
        cart[slot] = { name: tile.dataset.name, price: parseInt(tile.dataset.price, 10),
                       qty: 0, available: available };
      }
      if (cart[slot].qty < available) { cart[slot].qty += 1; }
      renderCart(); touch();
    });
  });
  $("clear").onclick = function () { cart = {}; renderCart(); };
  document.querySelectorAll(".back").forEach(function (b) { b.onclick = reset; });

  function fail() { $("error").hidden = false; setTimeout(function () { $("error").hidden = true; }, 5000); }

  $("checkout").onclick = function () {
    var items = Object.keys(cart).map(function (s) { return { slot_number: parseInt(s, 10), quantity: cart[s].qty }; });
    if (!items.length) { return; }
    $("checkout").disabled = true;
    fetch("/kiosk/" + encodeURIComponent(machine) + "/orders", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ items: items, lang: lang })
    }).then(function (r) {
      if (!r.ok) { throw new Error("checkout " + r.status); }
      return r.json();
    }).then(function (data) {
      order = { id: data.order_id, token: data.access_token };
      $("pay").innerHTML = data.html;
      show("pay");
      $("cancel").onclick = cancel;
      startCountdown($("countdown"));
      follow(order.id);
    }).catch(function () { fail(); }).finally(function () { $("checkout").disabled = false; });
  };

  function startCountdown(el) {
    var expires = Date.parse(el.dataset.expires);
    function tick() {
      var left = Math.max(0, Math.floor((expires - Date.now()) / 1000));
      el.textContent = Math.floor(left / 60) + ":" + String(left % 60).padStart(2, "0");
    }
    tick(); clearInterval(countdown); countdown = setInterval(tick, 1000);
  }

  function cancel() {
    if (!order) { return; }
    fetch("/kiosk/" + encodeURIComponent(machine) + "/orders/" + encodeURIComponent(order.id) + "/cancel",
          { method: "POST", headers: { "X-Order-Token": order.token } })
      .then(function (r) { return r.json(); }).then(apply).catch(fail);
  }

  function follow(id) {
    if (stream) { stream.close(); }
    stream = new EventSource("/api/orders/" + encodeURIComponent(id) + "/events");
    stream.addEventListener("order", function (e) { apply(JSON.parse(e.data)); });
  }

  function finish(screen) {
    if (stream) { stream.close(); stream = null; }
    clearInterval(countdown);
    show(screen);
    clearTimeout(back);
    back = setTimeout(reset, RESULT_MS);
  }

  function apply(s) {
    if (!order || s.order_id !== order.id) { return; }
    var settled = s.units_dropped + s.units_failed;
    switch (s.status) {
      case "PENDING":
        return;
      case "PAID":
      case "PENDING_DISPENSE":
      case "DISPENSING":
        show("progress");
        clearInterval(countdown);
        $("progress-title").textContent = s.status === "PAID" ? T.paid : T.dispensing;
        $("progress-units").textContent = Math.min(settled + 1, s.units_total) + " " + T.of + " " + s.units_total;
        $("progress-bar").style.width = (100 * settled / Math.max(1, s.units_total)) + "%";
        return;
      case "COMPLETED":
        return finish("done");
      case "FAILED":
      case "REFUNDED":
        $("refund-amount").textContent = rp(s.refund_amount);
        $("refund-units").textContent = s.units_dropped + " " + T.of + " " + s.units_total;
        return finish("refunded");
      case "EXPIRED":
      case "CANCELLED":
        $("closed-title").textContent = s.status === "EXPIRED" ? T.expired : T.cancelled;
        finish("closed");
        clearTimeout(back);
        back = setTimeout(reset, 5000);
        return;
    }
  }

  // A kiosk left with stale stock or presence refreshes itself while nobody is using it.
  setInterval(function () {
    if (!order && Object.keys(cart).length === 0) { location.reload(); }
  }, 45000);
  renderCart();
})();
