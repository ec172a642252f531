// The balancer's status page: reads /status every 2 s and updates the tables in place (no
// reload, no library). Every value is written with textContent, never as HTML: backend ids and
// regions may come from Consul. Drain and undrain POST to /admin/..., with the admin token
// kept in sessionStorage (this tab only) when the balancer asks for one.
"use strict";

const REFRESH_MS = 2000;
const TOKEN_KEY = "balancer-admin-token";
const $ = (id) => document.getElementById(id);

let tokenRequired = false;
let tokenDeclined = false;
let refreshTimer = null;

// -- formatting -------------------------------------------------------------------------------

function duration(seconds) {
  seconds = Math.floor(seconds);
  const d = Math.floor(seconds / 86400), h = Math.floor(seconds / 3600) % 24;
  const m = Math.floor(seconds / 60) % 60, s = seconds % 60;
  if (d) return `${d}d ${h}h ${m}m`;
  if (h) return `${h}h ${m}m ${s}s`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}

function ago(unix) {
  if (unix === null || unix === undefined) return "never";
  return `${duration(Math.max(0, Date.now() / 1000 - unix))} ago`;
}

function clock(unix) {
  return new Date(unix * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
}

function number(value, digits) {
  return value === null || value === undefined ? "–" : value.toFixed(digits);
}

function percent(share) {
  return share === null || share === undefined ? "–" : `${(share * 100).toFixed(1)}%`;
}

function millis(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  return seconds < 1 ? `${(seconds * 1000).toFixed(1)} ms` : `${seconds.toFixed(2)} s`;
}

// -- small DOM helpers ------------------------------------------------------------------------

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function setCells(row, values) {
  // A row's cells, created once and then only given new text, so a button being clicked is
  // never replaced under the pointer.
  while (row.cells.length < values.length) row.appendChild(el("td"));
  values.forEach((value, i) => {
    const cell = row.cells[i];
    const [text, className] = Array.isArray(value) ? value : [value, ""];
    if (cell.textContent !== String(text)) cell.textContent = text;
    if (cell.className !== className) cell.className = className;
  });
}

function syncRows(tbody, items, keyOf, fill) {
  // Rows keyed by data-key: update the kept ones, add new ones, drop the gone ones.
  const rows = new Map([...tbody.rows].map((row) => [row.dataset.key, row]));
  items.forEach((item, index) => {
    const key = keyOf(item);
    let row = rows.get(key);
    if (!row) {
      row = el("tr");
      row.dataset.key = key;
    }
    rows.delete(key);
    fill(row, item);
    if (tbody.rows[index] !== row) tbody.insertBefore(row, tbody.rows[index] || null);
  });
  rows.forEach((row) => row.remove());
}

// -- rendering --------------------------------------------------------------------------------

function renderInstance(instance) {
  const reload = instance.last_reload;
  let reloadText = "none since start";
  let reloadClass = "";
  if (reload) {
    reloadText = `${clock(reload.at)} (${ago(reload.at)}): ${reload.result}`;
    if (reload.result === "failure") {
      reloadText += ` — ${reload.errors.join("; ")}`;
      reloadClass = "failed";
    }
  }
  const rows = [
    ["version", instance.version],
    ["uptime", `${duration(instance.uptime_seconds)} (since ${clock(instance.started_at)})`],
    ["workers", String(instance.workers)],
    ["config file", instance.config_file || "–"],
    ["last reload", reloadText, reloadClass, "last-reload"],
    ["data plane", instance.data_plane],
  ];
  const dl = $("instance");
  if (dl.children.length !== rows.length * 2) {
    dl.replaceChildren(...rows.flatMap(([name, , , id]) => {
      const dd = el("dd");
      dd.dataset.field = id || name;
      return [el("dt", "", name), dd];
    }));
  }
  rows.forEach(([, value, className], i) => {
    const dd = dl.children[i * 2 + 1];
    dd.textContent = value;
    dd.className = className || "";
  });
}

function renderListeners(listeners) {
  syncRows($("listeners").tBodies[0], listeners, (l) => l.name, (row, l) => setCells(row, [
    l.name, l.address, l.tls ? "yes" : "no", l.proxy_protocol ? "yes" : "no",
    [String(l.connections), "num"], [String(l.max_connections), "num"],
    [String(l.connection_limit_reached), "num"],
  ]));
}

function backendState(b) {
  return b.state === "healthy" && b.slow_start ? "slow start" : b.state;
}

function checkText(check) {
  if (!check) return "–";
  return `${check.ok ? "passed" : "failed"}${check.detail ? `: ${check.detail}` : ""} (${ago(check.at)})`;
}

function poolSection(pool) {
  let section = document.querySelector(`section.pool[data-pool="${CSS.escape(pool.name)}"]`);
  if (section) return section;
  section = el("section", "pool");
  section.dataset.pool = pool.name;
  const title = el("h3");
  title.append(el("span", "name", pool.name), el("span", "badge eligible"), el("span", "badge panic"));
  const table = el("table", "backends");
  const head = table.createTHead().insertRow();
  for (const name of ["backend", "state", "region", "weight", "source", "active", "WebSockets",
                      "req/s", "5xx", "p99", "last health check", ""]) {
    head.appendChild(el("th", "", name));
  }
  table.createTBody();
  section.append(title, table);
  return section;
}

function renderPools(pools, windowSeconds) {
  const container = $("pools");
  const wanted = pools.map(poolSection);
  if (wanted.length !== container.children.length || wanted.some((s, i) => container.children[i] !== s)) {
    container.replaceChildren(...wanted);
  }
  pools.forEach((pool, i) => {
    const section = wanted[i];
    section.querySelector(".eligible").textContent = `${pool.eligible_backends} eligible`;
    const panic = section.querySelector(".panic");
    panic.textContent = "panic mode";
    panic.hidden = !pool.panic;
    panic.className = "badge panic failed";
    syncRows(section.querySelector("tbody"), pool.backends, (b) => b.id, (row, b) => {
      const state = backendState(b);
      row.dataset.backend = b.id;
      const weight = b.slow_start ? `${b.effective_weight} of ${b.weight}` : String(b.weight);
      setCells(row, [
        [b.id, "id"], [state, `state state-${state.replace(" ", "-")}`], b.region || "–", [weight, "num"],
        b.source, [String(b.active_requests), "num"], [String(b.websockets), "num"],
        [number(b.last_minute.requests_per_second, 1), "num rps"],
        [percent(b.last_minute.error_share), "num errors"], [millis(b.last_minute.p99_seconds), "num p99"],
        [checkText(b.last_check), b.last_check && !b.last_check.ok ? "check failed" : "check"],
      ]);
      actionCell(row, pool.name, b);
    });
  });
  $("window").textContent = windowSeconds < 59 ? `${Math.round(windowSeconds)} s (since start)` : "minute";
}

function actionCell(row, pool, backend) {
  while (row.cells.length < 12) row.appendChild(el("td"));
  const cell = row.cells[11];
  let button = cell.querySelector("button");
  if (!button) {
    button = el("button");
    button.type = "button";
    button.addEventListener("click", () => setDrain(pool, button.dataset.backend, button.dataset.action));
    cell.appendChild(button);
  }
  const action = backend.state === "draining" ? "undrain" : "drain";
  button.dataset.backend = backend.id;
  button.dataset.action = action;
  button.className = action;
  if (button.textContent !== action) button.textContent = action === "drain" ? "Drain" : "Undrain";
}

function renderConsul(watches) {
  $("consul-none").hidden = watches.length > 0;
  $("consul").hidden = watches.length === 0;
  syncRows($("consul").tBodies[0], watches, (w) => w.pool, (row, w) => setCells(row, [
    w.pool, w.service, w.last_success ? `${clock(w.last_success)} (${ago(w.last_success)})` : "never",
    w.failing ? [`unreachable for ${duration(Date.now() / 1000 - w.outage_since)}`, "failed"] : ["none", ""],
    [String(w.failures), "num"],
  ]));
}

// -- reading ----------------------------------------------------------------------------------

async function refresh() {
  clearTimeout(refreshTimer);
  try {
    const response = await fetch("status", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const doc = await response.json();
    tokenRequired = doc.instance.admin_token_required;
    renderInstance(doc.instance);
    renderListeners(doc.listeners);
    renderPools(doc.pools, doc.pools.length ? doc.pools[0].window_seconds : 0);
    renderConsul(doc.consul);
    showTokenForm(tokenRequired && !token() && !tokenDeclined);
    $("error").hidden = true;
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}, every ${REFRESH_MS / 1000} s`;
  } catch (error) {
    $("error").textContent = `Cannot read the balancer's status: ${error.message}. Retrying.`;
    $("error").hidden = false;
  } finally {
    refreshTimer = setTimeout(refresh, REFRESH_MS);
  }
}

// -- the admin token and drain / undrain ------------------------------------------------------

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

function showTokenForm(show) {
  $("token").hidden = !show;
}

function say(text, refused) {
  const message = $("message");
  message.textContent = text;
  message.className = refused ? "panel refused" : "panel";
  message.hidden = false;
}

async function setDrain(pool, backend, action) {
  if (tokenRequired && !token()) {
    say(`${action} ${backend} refused: this balancer needs its admin token (the variable named by ` +
        "admin.token_env). Enter it above; reading works without it.", true);
    tokenDeclined = false;
    showTokenForm(true);
    $("token-input").focus();
    return;
  }
  const headers = {};
  if (token()) headers.Authorization = `Bearer ${token()}`;
  const url = `admin/pools/${encodeURIComponent(pool)}/backends/${encodeURIComponent(backend)}/${action}`;
  try {
    const response = await fetch(url, { method: "POST", headers });
    const body = await response.json().catch(() => ({}));
    if (response.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      say(`${action} ${backend} refused: the admin token was not accepted (401). Enter it again.`, true);
      showTokenForm(true);
    } else if (!response.ok) {
      say(`${action} ${backend} failed: ${body.error || `HTTP ${response.status}`}`, true);
    } else {
      say(`${backend} in pool ${pool}: ${body.result}.`, false);
    }
  } catch (error) {
    say(`${action} ${backend} failed: ${error.message}`, true);
  }
  refresh();
}

document.addEventListener("DOMContentLoaded", () => {
  $("token").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("token-input").value.trim();
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    $("token-input").value = "";
    showTokenForm(!value);
    if (value) say("Admin token kept for this tab.", false);
  });
  $("token-skip").addEventListener("click", () => {
    tokenDeclined = true;
    showTokenForm(false);
    say("Read only: drain and undrain need the admin token.", true);
  });
  refresh();
});
