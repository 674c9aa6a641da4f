// The proxyd stats page: polls the admin API's status document every two seconds and shows
// listeners, caches, pools and servers, with rates computed from the difference between two polls.
//
// Everything from the API goes into the page through textContent or attributes, never as
// HTML, and the page has no inline script or style, so that it runs under
// `Content-Security-Policy: default-src 'self'`.
"use strict";

(() => {
  const POLL_MS = 2000;
  // A status document with many workers takes a round of AMP calls; past this the banner says
  // the API does not answer rather than the page waiting without a word.
  const TIMEOUT_MS = 5000;
  const TOKEN_KEY = "proxyd.admin.token";
  // Relative, so that the page also works behind a reverse proxy under a path prefix.
  const STATUS_URL = "api/v1/status";
  const ADMIN_STATES = ["drain", "maint", "ready"];

  const byId = (id) => document.getElementById(id);

  let token = sessionStorage.getItem(TOKEN_KEY) || "";
  let previous = null; // {time, servers: Map, listeners: Map} of the last poll, for rates
  let canChange = false;
  let pollTimer = null;
  let polling = false;
  const poolViews = new Map(); // pool name -> {section, caption, tbody, rows: Map}
  const listenerRows = new Map(); // listener name -> row view
  const cacheRows = new Map(); // cache name -> row view

  // ---- small helpers -----------------------------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function setText(node, text) {
    const value = String(text);
    if (node.textContent !== value) node.textContent = value;
  }

  function setAttr(node, name, value) {
    if (node.getAttribute(name) !== value) node.setAttribute(name, value);
  }

  function number(value) {
    return typeof value === "number" && Number.isFinite(value) ? value : null;
  }

  function formatRate(value) {
    if (value === null) return "–";
    if (value >= 1e6) return (value / 1e6).toFixed(1) + "M";
    if (value >= 1e4) return (value / 1e3).toFixed(0) + "k";
    if (value >= 1e3) return (value / 1e3).toFixed(1) + "k";
    if (value >= 10 || value === 0) return value.toFixed(0);
    return value.toFixed(1);
  }

  function formatBytesRate(value) {
    if (value === null) return "–";
    const units = ["B/s", "KiB/s", "MiB/s", "GiB/s"];
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return (unit === 0 || value >= 100 ? value.toFixed(0) : value.toFixed(1)) + " " + units[unit];
  }

  function formatBytes(value) {
    if (value === null) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return (unit === 0 || value >= 100 ? value.toFixed(0) : value.toFixed(1)) + " " + units[unit];
  }

  function formatRatio(value) {
    return value === null ? "–" : (value * 100).toFixed(1) + " %";
  }

  function formatSeconds(value) {
    if (value === null) return "–";
    if (value < 0.001) return (value * 1000).toFixed(2) + " ms";
    if (value < 0.1) return (value * 1000).toFixed(1) + " ms";
    if (value < 1) return (value * 1000).toFixed(0) + " ms";
    return value.toFixed(2) + " s";
  }

  const pad = (value) => String(value).padStart(2, "0");

  // Local time as 18:33:07, whatever the browser's locale: operators compare it with logs.
  function formatClock(unixSeconds) {
    const seconds = number(unixSeconds);
    if (seconds === null) return "–";
    const date = new Date(seconds * 1000);
    return pad(date.getHours()) + ":" + pad(date.getMinutes()) + ":" + pad(date.getSeconds());
  }

  function formatDateTime(unixSeconds) {
    const seconds = number(unixSeconds);
    if (seconds === null) return "–";
    const date = new Date(seconds * 1000);
    const day = date.getFullYear() + "-" + pad(date.getMonth() + 1) + "-" + pad(date.getDate());
    return day + " " + formatClock(seconds);
  }

  // Per second between two polls; null when there is no earlier poll or the counter went
  // back (a restarted worker starts its counters again from zero).
  function perSecond(now, before, seconds) {
    const a = number(now);
    const b = number(before);
    if (a === null || b === null || !(seconds > 0) || a < b) return null;
    return (a - b) / seconds;
  }

  // ---- the banner and the token form --------------------------------------------------------

  function showBanner(message) {
    const banner = byId("banner");
    setText(banner, message);
    banner.hidden = false;
    document.body.classList.add("stale");
  }

  function hideBanner() {
    byId("banner").hidden = true;
    document.body.classList.remove("stale");
  }

  function askForToken(message) {
    const form = byId("token-form");
    if (form.hidden) {
      form.hidden = false;
      byId("token").focus();
    }
    showBanner(message);
  }

  function useToken(value) {
    token = value;
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
    byId("forget-token").hidden = !token;
  }

  function headers(extra) {
    const all = Object.assign({ Accept: "application/json" }, extra || {});
    if (token) all.Authorization = "Bearer " + token;
    return all;
  }

  async function request(url, options) {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), TIMEOUT_MS);
    try {
      return await fetch(url, Object.assign({ cache: "no-store", signal: controller.signal }, options));
    } finally {
      clearTimeout(timer);
    }
  }

  async function errorText(response) {
    try {
      const body = await response.json();
      if (body && Array.isArray(body.errors)) return body.errors.join("; ");
      if (body && typeof body.error === "string") return body.error;
    } catch (_) {
      // Not JSON: the status line says enough.
    }
    return "HTTP " + response.status;
  }

  function failureText(error) {
    return error && error.name === "AbortError"
      ? "no answer within " + TIMEOUT_MS / 1000 + " s"
      : "cannot be reached";
  }

  // ---- polling ------------------------------------------------------------------------------

  function schedule(delay) {
    clearTimeout(pollTimer);
    pollTimer = setTimeout(poll, delay);
  }

  async function poll() {
    if (polling) return;
    polling = true;
    let again = true;
    try {
      const response = await request(STATUS_URL, { headers: headers() });
      if (response.status === 401) {
        // Asking again without a new token would only be refused again: wait for the form.
        again = false;
        askForToken(token ? "The admin API refused this token." : "The admin API needs a token.");
        return;
      }
      if (!response.ok) {
        showBanner("The admin API answered: " + (await errorText(response)));
        return;
      }
      const doc = await response.json();
      render(doc);
      byId("token-form").hidden = true;
      hideBanner();
    } catch (error) {
      showBanner("The admin API " + failureText(error) + "; showing the last data received.");
    } finally {
      polling = false;
      if (again) schedule(POLL_MS);
    }
  }

  // ---- rendering ----------------------------------------------------------------------------

  function render(doc) {
    const time = number(doc.time) ?? Date.now() / 1000;
    const seconds = previous ? time - previous.time : 0;
    const current = { time, servers: new Map(), listeners: new Map() };

    canChange = doc.can_change === true;
    document.body.classList.toggle("can-change", canChange);

    setText(byId("version"), doc.version ?? "–");
    setText(byId("workers"), doc.workers ?? "–");
    const config = doc.config || {};
    setText(byId("generation"), config.generation ?? "–");
    setText(byId("loaded"), formatDateTime(config.loaded));
    setAttr(byId("loaded"), "title", config.path ? "from " + config.path : "");
    setText(byId("refreshed"), formatClock(time));

    routeQueues = queuesByListener(doc.metrics || {});
    renderListeners(Array.isArray(doc.listeners) ? doc.listeners : [], seconds, current);
    renderCaches(Array.isArray(doc.caches) ? doc.caches : []);
    renderPools(Array.isArray(doc.pools) ? doc.pools : [], seconds, current);
    previous = current;
  }

  // Puts `node` at `index` in `parent` unless it is there already: moving a node that holds
  // the keyboard focus would lose it every two seconds.
  function place(parent, node, index) {
    if (parent.children[index] !== node) parent.insertBefore(node, parent.children[index] || null);
  }

  function removeUnseen(views, seen) {
    for (const [key, view] of views) {
      if (!seen.has(key)) {
        view.row.remove();
        views.delete(key);
      }
    }
  }

  // The routes' max_in_flight queues, from the relays' metrics: "KIND LISTENER" -> texts.
  let routeQueues = new Map();

  function queuesByListener(metrics) {
    const found = new Map();
    for (const [kind, listeners] of Object.entries(metrics)) {
      for (const [listener, routes] of Object.entries(listeners || {})) {
        for (const [route, pools] of Object.entries(routes || {})) {
          const queue = ((pools || {})[""] || {})[""]?.queue;
          if (!queue || !route) continue;
          const served = number(queue.served_from_queue) || 0;
          const wait = served ? (number(queue.wait_seconds) || 0) / served : null;
          const text =
            "route " + route + ": " + (number(queue.in_flight) ?? 0) + " in flight, " +
            (number(queue.waiting) ?? 0) + " queued" +
            (wait === null ? "" : ", mean wait " + formatSeconds(wait)) +
            ((number(queue.timed_out) || 0) + (number(queue.refused) || 0)
              ? ", " + ((number(queue.timed_out) || 0) + (number(queue.refused) || 0)) + " refused"
              : "");
          const key = kind + " " + listener;
          if (!found.has(key)) found.set(key, []);
          found.get(key).push(text);
        }
      }
    }
    return found;
  }

  function renderListeners(listeners, seconds, current) {
    const tbody = byId("listeners").tBodies[0];
    const seen = new Set();
    listeners.forEach((listener, index) => {
      const key = String(listener.name);
      seen.add(key);
      let view = listenerRows.get(key);
      if (!view) {
        view = { row: el("tr") };
        view.name = view.row.appendChild(el("th"));
        view.name.scope = "row";
        for (const [field, className] of [
          ["kind", ""],
          ["listen", "address"],
          ["connections", "num"],
          ["rate", "num"],
          ["other", "other"],
        ]) {
          view[field] = view.row.appendChild(el("td", className));
          view[field].dataset.column = field;
        }
        listenerRows.set(key, view);
      }
      place(tbody, view.row, index);
      const counters = listener.counters || {};
      current.listeners.set(key, counters);
      const before = previous && previous.listeners.get(key);
      setText(view.name, key);
      setText(view.kind, listener.kind ?? "");
      setText(view.listen, listener.listen ?? "");
      const open = number(counters.connections) ?? number(counters.sessions);
      setText(view.connections, open ?? "–");
      const requests = counters.requests ?? counters.datagrams;
      setText(
        view.rate,
        formatRate(before ? perSecond(requests, before.requests ?? before.datagrams, seconds) : null)
      );
      const shown = new Set(["connections", "requests"]);
      if (counters.connections === undefined) shown.add("sessions");
      if (counters.requests === undefined) shown.add("datagrams");
      const other = Object.keys(counters)
        .filter((name) => !shown.has(name) && number(counters[name]) !== null)
        .sort()
        .map((name) => name.replace(/_/g, " ") + " " + counters[name]);
      other.push(...(routeQueues.get(listener.kind + " " + key) || []));
      setText(view.other, other.join(" · "));
    });
    removeUnseen(listenerRows, seen);
    byId("listeners").classList.toggle("empty", listeners.length === 0);
  }

  // One row per [cache]: its hit ratio (the API's: hits and stale over hits, stale and
  // misses), what it holds, and its stale, collapsed and purged counts since start.
  function renderCaches(caches) {
    const tbody = byId("caches").tBodies[0];
    const seen = new Set();
    caches.forEach((cache, index) => {
      const key = String(cache.name);
      seen.add(key);
      let view = cacheRows.get(key);
      if (!view) {
        view = { row: el("tr") };
        view.name = view.row.appendChild(el("th"));
        view.name.scope = "row";
        for (const field of ["ratio", "entries", "size", "stale", "collapsed", "purged"]) {
          view[field] = view.row.appendChild(el("td", "num"));
          view[field].dataset.column = field;
        }
        cacheRows.set(key, view);
      }
      place(tbody, view.row, index);
      const counters = cache.counters || {};
      setText(view.name, key);
      setText(view.ratio, formatRatio(number(cache.hit_ratio)));
      setAttr(
        view.ratio,
        "title",
        (number(counters.hits) ?? 0) + " hits, " + (number(counters.stale) ?? 0) + " stale, " +
          (number(counters.misses) ?? 0) + " misses, " + (number(counters.bypassed) ?? 0) +
          " bypassed"
      );
      setText(view.entries, number(cache.entries) ?? "–");
      setText(view.size, formatBytes(number(cache.bytes)));
      for (const field of ["stale", "collapsed", "purged"]) {
        setText(view[field], number(counters[field]) ?? "–");
      }
    });
    removeUnseen(cacheRows, seen);
    byId("caches-section").hidden = caches.length === 0;
  }

  function makePoolView(name) {
    const section = el("section", "pool");
    section.dataset.pool = name;
    const table = section.appendChild(el("div", "scroll")).appendChild(el("table", "data"));
    const caption = table.appendChild(el("caption"));
    const title = caption.appendChild(el("span", "pool-name"));
    const balance = caption.appendChild(el("span", "balance"));
    const summary = caption.appendChild(el("span", "pool-summary"));
    const head = table.appendChild(el("thead")).appendChild(el("tr"));
    const columns = [
      ["Server", ""],
      ["State", ""],
      ["Reason", ""],
      ["Weight", "num"],
      ["Active", "num"],
      ["Req/s", "num"],
      ["In/s", "num"],
      ["Out/s", "num"],
      ["Mean response", "num"],
      ["Errors", "num"],
      ["Checks", ""],
      ["Actions", "actions"],
    ];
    for (const [label, className] of columns) {
      const th = head.appendChild(el("th", className, label));
      th.scope = "col";
    }
    const actionsHeader = head.lastChild;
    const tbody = table.appendChild(el("tbody"));
    return { section, title, balance, summary, tbody, actionsHeader, rows: new Map() };
  }

  function renderPools(pools, seconds, current) {
    const container = byId("pools");
    const seen = new Set();
    pools.forEach((pool, index) => {
      const name = String(pool.name);
      seen.add(name);
      let view = poolViews.get(name);
      if (!view) {
        view = makePoolView(name);
        poolViews.set(name, view);
      }
      place(container, view.section, index);
      const servers = Array.isArray(pool.servers) ? pool.servers : [];
      setText(view.title, name);
      setText(view.balance, pool.balance ?? "");
      const up = servers.filter((server) => server.state === "up").length;
      const queue = pool.queue;
      let summary = up + " of " + servers.length + " up";
      if (queue) {
        const left = (number(queue.queued) || 0) - (number(queue.waiting) || 0);
        const served = left - (number(queue.timed_out) || 0);
        summary += " · " + (number(queue.waiting) ?? 0) + " queued";
        if (served > 0) summary += ", mean wait " + formatSeconds((number(queue.wait_seconds) || 0) / served);
        if (number(queue.timed_out) || number(queue.refused)) {
          summary += ", " + ((number(queue.timed_out) || 0) + (number(queue.refused) || 0)) + " refused";
        }
      }
      setText(view.summary, summary);
      view.summary.classList.toggle("degraded", up < servers.length);
      view.summary.classList.toggle("critical", servers.length > 0 && up === 0);
      view.actionsHeader.hidden = !canChange;
      renderServers(name, view, servers, seconds, current);
    });
    for (const [name, view] of poolViews) {
      if (!seen.has(name)) {
        view.section.remove();
        poolViews.delete(name);
      }
    }
  }

  function makeServerView(pool, name) {
    const row = el("tr", "server");
    row.dataset.pool = pool;
    row.dataset.server = name;
    const view = { row };
    view.name = row.appendChild(el("th"));
    view.name.scope = "row";
    const stateCell = row.appendChild(el("td", "state"));
    stateCell.dataset.column = "state";
    view.badge = stateCell.appendChild(el("span", "badge"));
    view.detail = stateCell.appendChild(el("span", "detail"));
    for (const [field, className] of [
      ["reason", "reason"],
      ["weight", "num"],
      ["active", "num"],
      ["requests", "num"],
      ["bytesIn", "num"],
      ["bytesOut", "num"],
      ["latency", "num"],
      ["errors", "num"],
      ["checks", "checks"],
      ["actions", "actions"],
    ]) {
      view[field] = row.appendChild(el("td", className));
      view[field].dataset.column = field;
    }
    view.buttons = null;
    return view;
  }

  function renderServers(pool, poolView, servers, seconds, current) {
    const seen = new Set();
    servers.forEach((server, index) => {
      const name = String(server.name);
      seen.add(name);
      let view = poolView.rows.get(name);
      if (!view) {
        view = makeServerView(pool, name);
        poolView.rows.set(name, view);
      }
      place(poolView.tbody, view.row, index);
      const key = pool + "\u0000" + name;
      const traffic = server.traffic || null;
      if (traffic) current.servers.set(key, traffic);
      const before = previous && previous.servers.get(key);
      renderServer(view, pool, server, traffic, before, seconds);
    });
    removeUnseen(poolView.rows, seen);
  }

  function renderServer(view, pool, server, traffic, before, seconds) {
    const state = String(server.state ?? "unknown");
    setText(view.name, server.name);
    setAttr(view.row, "data-state", state);
    setText(view.badge, state.toUpperCase());
    setAttr(view.badge, "class", "badge state-" + state);
    // A drained or maintained server's health still matters for when it is made ready again.
    const health = server.health;
    setText(view.detail, state !== "up" && state !== "down" && health ? "health " + health : "");
    setText(view.reason, server.reason ?? "");
    setText(view.weight, (server.weight ?? "–") + (server.backup ? " backup" : ""));
    setText(view.active, server.active ?? "–");
    // A server of an HTTP/2 pool: its requests in flight share a few connections.
    const http2 = server.http2;
    if (http2) {
      const text = "HTTP/2: " + (number(http2.connections) ?? 0) + " connections, " +
        (number(http2.streams) ?? 0) + " streams open";
      setAttr(view.active, "title", text);
    } else {
      view.active.removeAttribute("title");
    }

    const delta = (field) => (traffic && before ? perSecond(traffic[field], before[field], seconds) : null);
    setText(view.requests, formatRate(delta("requests")));
    setText(view.bytesIn, formatBytesRate(delta("bytes_in")));
    setText(view.bytesOut, formatBytesRate(delta("bytes_out")));
    let mean = null;
    if (traffic && before) {
      const count = perSecond(traffic.response_time_count, before.response_time_count, 1);
      const sum = perSecond(traffic.response_time_sum, before.response_time_sum, 1);
      if (count && sum !== null) mean = sum / count;
    }
    setText(view.latency, formatSeconds(mean));
    setAttr(view.latency, "title", "mean over the last " + (seconds > 0 ? seconds.toFixed(1) : "–") + " s");
    const errors = traffic ? number(traffic.errors) : null;
    setText(view.errors, errors ?? "–");
    view.errors.classList.toggle("bad", Boolean(delta("errors")));

    renderChecks(view.checks, Array.isArray(server.checks) ? server.checks : null);
    renderActions(view, pool, server);
  }

  function renderChecks(cell, checks) {
    if (checks === null || checks.length === 0) {
      setText(cell, checks === null ? "" : "not checked");
      cell.removeAttribute("aria-label");
      return;
    }
    const failed = checks.filter((check) => !check.ok).length;
    const label = "last " + checks.length + " checks: " + (checks.length - failed) + " passed, " + failed + " failed";
    setAttr(cell, "aria-label", label);
    cell.replaceChildren(
      ...checks.map((check) => {
        const dot = el("span", check.ok ? "dot ok" : "dot failed");
        const parts = [formatClock(check.time), check.ok ? "passed" : "failed"];
        if (number(check.duration) !== null) parts.push("in " + formatSeconds(check.duration));
        if (check.reason) parts.push("— " + check.reason);
        dot.title = parts.join(" ");
        dot.setAttribute("aria-hidden", "true");
        return dot;
      })
    );
  }

  function renderActions(view, pool, server) {
    view.actions.hidden = !canChange;
    if (!canChange) {
      if (view.buttons) {
        view.actions.replaceChildren();
        view.buttons = null;
      }
      return;
    }
    if (!view.buttons) {
      view.buttons = new Map();
      for (const admin of ADMIN_STATES) {
        const button = el("button", "action action-" + admin, admin[0].toUpperCase() + admin.slice(1));
        button.type = "button";
        button.dataset.admin = admin;
        button.addEventListener("click", () => change(view, pool, view.row.dataset.server, admin));
        view.buttons.set(admin, button);
        view.actions.appendChild(button);
      }
    }
    const admin = server.admin ?? (["drain", "maint"].includes(server.state) ? server.state : "ready");
    for (const [value, button] of view.buttons) {
      button.disabled = view.busy === true || value === admin;
      setAttr(button, "aria-label", button.textContent + " " + server.name + " in pool " + pool);
    }
  }

  // ---- changes --------------------------------------------------------------------------------

  async function change(view, pool, server, admin) {
    view.busy = true;
    for (const button of view.buttons.values()) button.disabled = true;
    const url = "api/v1/pools/" + encodeURIComponent(pool) + "/servers/" + encodeURIComponent(server);
    try {
      const response = await request(url, {
        method: "POST",
        headers: headers({ "Content-Type": "application/json" }),
        body: JSON.stringify({ admin }),
      });
      if (response.status === 401) {
        askForToken("The admin API needs a token to change a server.");
      } else if (response.status === 403) {
        showBanner("This token may read but not change servers.");
      } else if (!response.ok) {
        showBanner("Could not set " + server + " to " + admin + ": " + (await errorText(response)));
      } else {
        const updated = await response.json();
        renderServer(view, pool, updated, updated.traffic || null, null, 0);
      }
    } catch (error) {
      showBanner("Could not set " + server + " to " + admin + ": the admin API " + failureText(error) + ".");
    } finally {
      view.busy = false;
      schedule(0);
    }
  }

  // ---- start ----------------------------------------------------------------------------------

  function start() {
    byId("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      useToken(byId("token").value.trim());
      byId("token").value = "";
      byId("token-form").hidden = true;
      schedule(0);
    });
    byId("forget-token").querySelector("button").addEventListener("click", () => {
      useToken("");
      previous = null;
      schedule(0);
    });
    useToken(token);
    poll();
  }

  start();
})();
