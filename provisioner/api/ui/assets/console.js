// prov web console: confirmations, older history on demand, live updates from /ui/events.
// Plain JS, no framework. Everything taken from an event is set with textContent or as a class
// name made of [a-z-] only: nothing streamed is ever parsed as HTML.
(function () {
  "use strict";
  var TRANSIENT = ["verifying", "installing", "install-wait", "booting", "configuring", "decommissioning"];
  var body = document.body;

  // Destructive actions ask first (data-confirm on their form).
  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    var question = form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) { ev.preventDefault(); }
  });

  // "Show older history": fetch the previous page and put it above the current one.
  document.addEventListener("click", function (ev) {
    var link = ev.target.closest && ev.target.closest("a[data-older]");
    if (!link) { return; }
    ev.preventDefault();
    fetch(link.href, {credentials: "same-origin"}).then(function (r) {
      if (!r.ok) { throw new Error(r.status); }
      return r.text();
    }).then(function (html) {
      var item = link.parentNode;
      var tpl = document.createElement("template");
      tpl.innerHTML = html;  // our own server-rendered, escaped fragment
      item.parentNode.replaceChild(tpl.content, item);
    }).catch(function () { say("Could not load older history.", false); });
  });

  function say(text, ok) {
    var live = document.getElementById("live");
    if (!live) { return; }
    var span = document.createElement("span");
    span.className = ok ? "ok" : "err";
    span.textContent = text;
    live.replaceChildren(span);
  }

  function safeClass(value) { return String(value || "unknown").toLowerCase().replace(/[^a-z0-9-]/g, ""); }

  function hostNodes(name) {
    var out = [];
    document.querySelectorAll("[data-host]").forEach(function (el) {
      if (el.getAttribute("data-host") === name) { out.push(el); }
    });
    return out;
  }

  function setState(el, state) {
    var cls = safeClass(state);
    el.className = el.className.split(/\s+/).filter(function (c) { return c.indexOf("st-") !== 0; }).concat("st-" + cls).join(" ");
    el.querySelectorAll("[data-role=state]").forEach(function (b) {
      b.className = "badge st-" + cls;
      b.textContent = state;
    });
    el.querySelectorAll("[data-role=state-text]").forEach(function (t) { t.textContent = state + " (live)"; });
    el.querySelectorAll("[data-role=progress]").forEach(function (bar) {
      bar.classList.toggle("idle", TRANSIENT.indexOf(state) < 0);
      if (TRANSIENT.indexOf(state) < 0) { bar.value = 0; }
    });
  }

  function setPower(el, power) {
    el.querySelectorAll("[data-role=power]").forEach(function (p) {
      p.className = "power pw-" + safeClass(power);
      var text = p.querySelector(".pw-text");
      if (text) { text.textContent = power; }
    });
  }

  function setProgress(el, pct) {
    el.querySelectorAll("[data-role=progress]").forEach(function (bar) {
      bar.value = pct;
      bar.textContent = pct + "%";
      bar.classList.remove("idle");
    });
  }

  function appendHistory(ev) {
    var list = document.getElementById("history");
    if (!list || !ev.message && ev.kind !== "host.state") { return; }
    var li = document.createElement("li");
    var time = document.createElement("time");
    time.dateTime = ev.at;
    time.textContent = String(ev.at).replace("T", " ").replace(/\.\d+Z$|Z$/, "");
    var kind = document.createElement("span");
    kind.className = "ev";
    kind.textContent = ev.kind === "host.state" ? "→ " + ev.state : ev.kind.replace("host.", "");
    var msg = document.createElement("span");
    msg.className = "msg";
    msg.textContent = ev.message || "";
    li.append(time, " ", kind, " ", msg);
    list.appendChild(li);
  }

  function taskRow(ev) {
    document.querySelectorAll("[data-task]").forEach(function (row) {
      if (row.getAttribute("data-task") !== String(ev.task)) { return; }
      var st = row.querySelector("[data-role=task-status]");
      if (st && ev.state) { st.textContent = ev.state; }
      var bar = row.querySelector("[data-role=task-progress]");
      if (bar && ev.progress !== null && ev.progress !== undefined) { bar.value = ev.progress; bar.textContent = ev.progress + "%"; }
    });
  }

  function handle(ev) {
    if (ev.kind === "stream.lost") { say("Some events were lost: reload the page for the current state.", false); return; }
    if (ev.kind === "task.progress") {
      taskRow(ev);
      if (ev.host && ev.progress !== null && ev.progress !== undefined) {
        hostNodes(ev.host).forEach(function (el) { setProgress(el, ev.progress); });
      }
      return;
    }
    if (!ev.host) { return; }
    var nodes = hostNodes(ev.host);
    if (ev.kind === "host.state" && ev.state) { nodes.forEach(function (el) { setState(el, ev.state); }); }
    if (ev.kind === "host.power" && ev.state) { nodes.forEach(function (el) { setPower(el, ev.state); }); }
    if (ev.kind === "inventory" && nodes.length === 0 && body.getAttribute("data-stream") === "") {
      say("The inventory changed: reload to see it.", true);
    }
    if (ev.kind === "host.history" || ev.kind === "host.state" || ev.kind === "drift") {
      if (body.getAttribute("data-stream") === "host=" + ev.host) { appendHistory(ev); }
    }
  }

  if (!window.EventSource || !body.hasAttribute("data-stream")) { return; }
  var params = new URLSearchParams(body.getAttribute("data-stream") || "");
  params.set("after", body.getAttribute("data-after") || "0");
  var source = new EventSource("/ui/events?" + params.toString());
  source.onmessage = function (msg) {
    try { handle(JSON.parse(msg.data)); } catch (e) { /* one bad event must not stop the stream */ }
  };
  source.onopen = function () { body.setAttribute("data-live", "open"); };
  source.onerror = function () { body.setAttribute("data-live", "retrying"); };
})();
