// The reference inbox page: the feed over the REST API, new notifications and state changes
// live over the WebSocket (/v1/inbox/ws), reconnecting with after=<the last entry id seen>.
"use strict";

const TOKEN_KEY = "vs9-inbox-token";
const PAGE_SIZE = 50;
const RETRY_MAX_MS = 30000;
// Close codes after which reconnecting cannot help (bad token, no inbox scope).
const FINAL_CLOSE_CODES = new Set([4401, 4403]);

const page = {
  token: null,
  filter: "",
  cursor: null,
  after: null, // the newest stream entry id this page has received
  socket: null,
  retries: 0,
  retryTimer: null,
  items: new Map(), // notification id -> its <li>
};

const $ = (id) => document.getElementById(id);

function showError(text) {
  const box = $("error");
  box.textContent = text;
  box.hidden = !text;
}

function setStatus(text) {
  const status = $("status");
  status.textContent = text;
  status.className = "status " + text;
}

async function call(path, options = {}) {
  const headers = { Authorization: "Bearer " + page.token, ...(options.headers || {}) };
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    ...options,
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
  });
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const detail = body && body.detail ? body.detail : response.statusText;
    throw new Error(`${response.status}: ${detail}`);
  }
  return body;
}

function setUnread(count) {
  const badge = $("unread-count");
  badge.textContent = String(count);
  badge.classList.toggle("zero", count === 0);
}

async function refreshUnread() {
  try {
    setUnread((await call("/v1/inbox/unread-count")).unread);
  } catch (error) {
    showError(error.message);
  }
}

function newer(a, b) {
  // Stream entry ids compare as (milliseconds, sequence).
  if (b === null) return true;
  const [am, as] = a.split("-").map(BigInt);
  const [bm, bs] = b.split("-").map(BigInt);
  return am > bm || (am === bm && as > bs);
}

function shows(state) {
  if (page.filter === "") return true;
  if (page.filter === "unread") return state !== "read" && state !== "archived";
  return state === page.filter;
}

function applyState(li, state) {
  li.dataset.state = state || "";
  li.classList.toggle("unread", state !== "read" && state !== "archived");
  li.classList.toggle("archived", state === "archived");
  li.querySelector(".mark-read").disabled = state === "read" || state === "archived";
  li.querySelector(".archive").disabled = state === "archived";
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function itemElement(item) {
  const note = item.notification;
  const li = element("li", "item");
  li.dataset.id = note.notification_id;
  li.dataset.entry = item.entry_id;
  const meta = element("div", "meta");
  meta.append(
    element("span", "priority " + note.highest_priority, note.highest_priority),
    element("time", "when", new Date(note.window_end).toLocaleString()),
  );
  const actions = element("div", "actions");
  const read = element("button", "mark-read", "mark read");
  read.type = "button";
  read.addEventListener("click", () => mark(note.notification_id, "read"));
  const archive = element("button", "archive", "archive");
  archive.type = "button";
  archive.addEventListener("click", () => mark(note.notification_id, "archived"));
  actions.append(read, archive);
  li.append(element("div", "title", note.title), meta, element("p", "message", note.message), actions);
  applyState(li, item.state);
  return li;
}

function showItem(item, atTop) {
  const id = item.notification.notification_id;
  const known = page.items.get(id);
  if (known) {
    applyState(known, item.state);
    return;
  }
  if (!shows(item.state)) return;
  const li = itemElement(item);
  page.items.set(id, li);
  const feed = $("feed");
  if (atTop) feed.prepend(li);
  else feed.append(li);
  $("empty").hidden = true;
}

async function mark(notificationId, state) {
  try {
    const result = await call(`/v1/inbox/${encodeURIComponent(notificationId)}/mark`, {
      method: "POST",
      body: { state },
    });
    const li = page.items.get(notificationId);
    if (li) applyState(li, state);
    setUnread(result.unread);
  } catch (error) {
    showError(error.message);
  }
}

async function markAllRead() {
  try {
    const body = page.after && page.after !== "0-0" ? { state: "read", up_to: page.after } : { state: "read" };
    const result = await call("/v1/inbox/mark-all", { method: "POST", body });
    for (const id of result.changed) {
      const li = page.items.get(id);
      if (li) applyState(li, "read");
    }
    setUnread(result.unread);
  } catch (error) {
    showError(error.message);
  }
}

async function loadPage() {
  const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
  if (page.filter) query.set("state", page.filter);
  if (page.cursor) query.set("cursor", page.cursor);
  const result = await call("/v1/inbox?" + query);
  for (const item of result.items) showItem(item, false);
  page.cursor = result.next_cursor;
  $("more").hidden = !page.cursor;
  $("empty").hidden = page.items.size > 0;
}

async function reload() {
  page.items.clear();
  page.cursor = null;
  $("feed").replaceChildren();
  await loadPage();
}

function socketUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const query = new URLSearchParams({ access_token: page.token, after: page.after || "0-0" });
  return `${scheme}//${location.host}/v1/inbox/ws?${query}`;
}

function onMessage(event) {
  const message = JSON.parse(event.data);
  switch (message.type) {
    case "ready":
      page.retries = 0;
      if (page.after === null) page.after = message.after;
      setStatus("live");
      break;
    case "notification":
      if (newer(message.entry_id, page.after)) page.after = message.entry_id;
      showItem(message, true);
      refreshUnread();
      break;
    case "state": {
      const li = page.items.get(message.notification_id);
      if (li) applyState(li, message.state);
      refreshUnread();
      break;
    }
    case "heartbeat":
      $("status").title = "last heartbeat " + message.at;
      break;
  }
}

function connect() {
  clearTimeout(page.retryTimer);
  if (page.socket) page.socket.close(1000);
  const socket = new WebSocket(socketUrl());
  page.socket = socket;
  socket.addEventListener("message", onMessage);
  socket.addEventListener("close", (event) => {
    if (page.socket !== socket) return; // replaced by a newer connection
    page.socket = null;
    if (FINAL_CLOSE_CODES.has(event.code)) {
      setStatus("offline");
      showError(`the live feed refused the token (${event.code}): ${event.reason}`);
      return;
    }
    setStatus("reconnecting");
    const delay = Math.min(RETRY_MAX_MS, 1000 * 2 ** page.retries) * (0.5 + Math.random() / 2);
    page.retries += 1;
    page.retryTimer = setTimeout(connect, delay);
  });
}

async function start(token) {
  page.token = token;
  page.after = null;
  sessionStorage.setItem(TOKEN_KEY, token);
  showError("");
  try {
    // The newest entry overall (whatever the filter), so the socket follows on from it.
    const newest = await call("/v1/inbox?limit=1");
    page.after = newest.items.length ? newest.items[0].entry_id : "0-0";
    await reload();
    await refreshUnread();
    connect();
  } catch (error) {
    setStatus("offline");
    showError(error.message);
  }
}

function tokenFromFragment() {
  const token = new URLSearchParams(location.hash.slice(1)).get("token");
  if (token) {
    // Out of the address bar and the history, where it would be copied along.
    history.replaceState(null, "", location.pathname + location.search);
  }
  return token;
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = $("token").value.trim();
  if (token) start(token);
});
$("filter").addEventListener("change", async () => {
  page.filter = $("filter").value;
  try {
    await reload();
  } catch (error) {
    showError(error.message);
  }
});
$("more").addEventListener("click", () => loadPage().catch((error) => showError(error.message)));
$("mark-all-read").addEventListener("click", markAllRead);

const initial = tokenFromFragment() || sessionStorage.getItem(TOKEN_KEY);
if (initial) start(initial);
