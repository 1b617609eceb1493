// The web chat client of Parley: log in, conversations, messages with
// receipts and typing, groups, friends and presence, offline sending.
//
// State: the session (this tab's device and token) lives in sessionStorage;
// what the inbox taught us (conversations, cursors, friends, the last
// inbox_seq applied, the unsent messages and the newest messages of each
// conversation) lives in localStorage per user, saved together so that it is
// always consistent with its inbox_seq; Sync catches up from there after a
// reload or a lost connection. Unsent messages keep their client_msg_id
// across retries and reloads, so each is sent exactly once.

import { api, ChatClient, dmChannel, ID_RE, num, v1 } from "./client.js";
import { h, isoTime, lastSeen, reconcile, shortTime, sr } from "./view.js";

const $ = (id) => document.getElementById(id);

const RECEIPT = v1.ReceiptKind;
const FRIEND_STATE = Object.fromEntries(Object.entries(v1.FriendState).map(([k, v]) => [v, k]));
const SESSION_KEY = "parley.session";
const DEVICE_KEY = "parley.device";
const stateKey = (user) => `parley.state.v1.${user}`;
const RECENT_PER_CONV = 50;
const STORED_TEXT_MAX = 4000;
const TYPING_SHOWN_MS = 6000;
const TYPING_EVERY_MS = 3000;

let session = null; // {user, device, token, expiresAt, mqtt}
let client = null;
let data = null; // the persisted state of the signed-in user
const msgs = new Map(); // channel -> Map(seq -> {seq, sender, text, ts, cmid, system})
const presence = new Map(); // user -> {online, last}
const typing = new Map(); // channel -> Map(user -> shown until, ms)
const fetched = new Set(); // channels whose newest history page was read since load
const noOlder = new Set(); // channels with no message before their oldest known one
const loading = new Set(); // history requests in flight, by `${channel}:${before}`
const filledGaps = new Set(); // gaps the server had nothing for
const receiptsSent = new Map(); // `${channel}:${kind}` -> seq asked for
const noTyping = new Set(); // channels where typing notices were refused
let openChannel = null;
let conn = { state: "connecting", detail: "", retryAt: 0, manual: false };
let typingSent = { channel: null, at: 0 };
let typingTimer = null;
let keepFromBottom = false;
let forceBottom = false;

const me = () => session && session.user;

// ------------------------------------------------------------ persistence

function emptyData() {
  return { v: 1, inboxSeq: 0, convs: {}, friends: {}, outbox: [], recent: {} };
}

function loadData(user) {
  try {
    const stored = JSON.parse(localStorage.getItem(stateKey(user)));
    if (stored && stored.v === 1) return { ...emptyData(), ...stored };
  } catch {
    // unreadable: start again from the beginning of the inbox
  }
  return emptyData();
}

let saveTimer = null;
function save() {
  clearTimeout(saveTimer);
  saveTimer = setTimeout(saveNow, 300);
}

function saveNow() {
  clearTimeout(saveTimer);
  if (!session || !data) return;
  if (client) data.inboxSeq = client.lastSeq;
  data.recent = {};
  for (const [channel, map] of msgs) {
    const kept = [...map.values()]
      .sort((a, b) => a.seq - b.seq)
      .slice(-RECENT_PER_CONV)
      .filter((m) => m.text.length <= STORED_TEXT_MAX);
    if (kept.length) data.recent[channel] = kept;
  }
  try {
    localStorage.setItem(stateKey(session.user), JSON.stringify(data));
  } catch {
    data.recent = {}; // over the quota: keep the state without the messages
    try {
      localStorage.setItem(stateKey(session.user), JSON.stringify(data));
    } catch (error) {
      toast("Cannot save on this device", String(error.message || error));
    }
  }
}

function deviceId() {
  let id = sessionStorage.getItem(DEVICE_KEY);
  if (!id) {
    const bytes = crypto.getRandomValues(new Uint8Array(4));
    id = `web-${[...bytes].map((b) => b.toString(16).padStart(2, "0")).join("")}`;
    sessionStorage.setItem(DEVICE_KEY, id);
  }
  return id;
}

function uuid() {
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const x = [...b].map((v) => v.toString(16).padStart(2, "0")).join("");
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`;
}

// ------------------------------------------------------------ the model

function kindOf(channel) {
  if (channel.startsWith("dm:")) return "dm";
  if (channel.startsWith("g:")) return "group";
  if (channel.startsWith("sys:")) return "sys";
  return "other";
}

function peerOf(channel) {
  const [, a, b] = channel.split(":");
  return a === me() ? b : a;
}

function ensureConv(channel) {
  let c = data.convs[channel];
  if (!c) {
    c = {
      channel,
      kind: kindOf(channel),
      name: "",
      members: [],
      known: false, // a GroupEvent was seen
      left: false,
      lastSeq: 0, // newest message seq known
      lastOther: 0, // newest seq of a message from someone else
      preview: null,
      activity: localActivity(),
      myRead: 0, // my read cursor as the server has it
      myDelivered: 0,
      seen: 0, // read here, maybe not yet told to the server
      cursors: {}, // other user -> [delivered, read]
      unread: [], // seqs of others' messages after my read cursor
      events: [], // group changes: {key, after (seq), text}
    };
    data.convs[channel] = c;
  }
  return c;
}

/** Sorts a conversation opened here (no inbox event yet) on top. */
function localActivity() {
  return (client ? client.lastSeq : data.inboxSeq) + 0.5;
}

function convName(c) {
  if (c.kind === "dm") return peerOf(c.channel);
  if (c.kind === "group") return c.name || c.channel.slice(2);
  if (c.kind === "sys") return "System messages";
  return c.channel;
}

const canSend = (c) => c.kind !== "sys" && !c.left;

function storeMsg(channel, m) {
  let map = msgs.get(channel);
  if (!map) msgs.set(channel, (map = new Map()));
  if (!map.has(m.seq)) map.set(m.seq, m);
  const c = ensureConv(channel);
  if (m.seq > c.lastSeq) {
    c.lastSeq = m.seq;
    c.preview = { sender: m.sender, text: m.text.slice(0, 200), ts: m.ts, system: m.system };
  }
}

function fromProto(m) {
  return {
    seq: num(m.seq),
    sender: m.sender,
    text: m.text,
    ts: num(m.ts_ms),
    cmid: m.client_msg_id || "",
    system: !!m.system,
  };
}

function recomputeUnread(c) {
  const floor = Math.max(c.myRead, c.seen);
  c.unread = c.unread.filter((seq) => seq > floor);
}

function unreadCount(c) {
  return c.unread.length;
}

function onEnvelope(env, inboxSeq) {
  switch (env.body) {
    case "message":
      applyMessage(env.message, inboxSeq);
      break;
    case "receipt":
      applyReceipt(env.receipt);
      break;
    case "group":
      applyGroup(env.group, inboxSeq);
      break;
    case "friend":
      applyFriend(env.friend);
      break;
    default:
      break; // a kind this page does not know: applied, nothing to show
  }
  changed();
}

function applyMessage(proto, inboxSeq) {
  const m = fromProto(proto);
  const c = ensureConv(proto.channel);
  storeMsg(proto.channel, m);
  c.activity = inboxSeq;
  if (m.sender === me()) {
    // my own message (from any of my devices): my cursor moved to it
    c.myRead = Math.max(c.myRead, m.seq);
    c.myDelivered = Math.max(c.myDelivered, m.seq);
    recomputeUnread(c);
    if (m.cmid) data.outbox = data.outbox.filter((e) => e.id !== m.cmid);
  } else {
    if (c.kind !== "sys" && !m.system) {
      // the sender's cursor moved to its own message
      const [d, r] = c.cursors[m.sender] || [0, 0];
      c.cursors[m.sender] = [Math.max(d, m.seq), Math.max(r, m.seq)];
    }
    c.lastOther = Math.max(c.lastOther, m.seq);
    if (looking() && openChannel === proto.channel) c.seen = Math.max(c.seen, m.seq); // on screen
    if (m.seq > Math.max(c.myRead, c.seen) && !c.unread.includes(m.seq)) c.unread.push(m.seq);
    const typers = typing.get(proto.channel);
    if (typers) typers.delete(m.sender);
  }
}

function applyReceipt(r) {
  const c = ensureConv(r.channel);
  const seq = num(r.seq);
  const read = r.kind === RECEIPT.READ;
  if (r.user === me()) {
    c.myDelivered = Math.max(c.myDelivered, seq);
    if (read) c.myRead = Math.max(c.myRead, seq);
    recomputeUnread(c);
  } else {
    const [d, rd] = c.cursors[r.user] || [0, 0];
    c.cursors[r.user] = [Math.max(d, seq), read ? Math.max(rd, seq) : rd];
  }
}

function applyGroup(g, inboxSeq) {
  const c = ensureConv(`g:${g.group_id}`);
  const before = c.members || [];
  const after = [...g.members];
  const text = describeGroup(c.known, before, after, g.actor, g.name);
  c.known = true;
  c.name = g.name;
  c.members = after;
  c.left = !after.includes(me());
  c.activity = inboxSeq;
  c.events.push({ key: `e${inboxSeq}`, after: c.lastSeq, text });
  if (c.events.length > RECENT_PER_CONV) c.events.shift();
  c.preview = { sender: "", text, ts: 0, system: true };
}

function describeGroup(known, before, after, actor, name) {
  const who = (u) => (u === me() ? "you" : u);
  const cap = (s) => s.charAt(0).toUpperCase() + s.slice(1);
  const list = (users) => users.map(who).join(", ");
  if (!known) {
    // the first event of this group in my inbox: its creation, or being added
    const title = name ? ` “${name}”` : "";
    if (actor === me()) return `You created the group${title}`;
    if (after.includes(me())) return `${actor} added you to the group${title}`;
  }
  const added = after.filter((u) => !before.includes(u));
  const removed = before.filter((u) => !after.includes(u));
  const parts = [];
  if (added.length) parts.push(`${who(actor)} added ${list(added)}`);
  if (removed.length === 1 && removed[0] === actor) parts.push(`${who(actor)} left`);
  else if (removed.length) parts.push(`${who(actor)} removed ${list(removed)}`);
  if (!parts.length) parts.push(`${who(actor)} changed the group`);
  return cap(parts.join("; "));
}

function applyFriend(f) {
  const state = FRIEND_STATE[f.state];
  if (state === "REMOVED" || !state || state === "FRIEND_STATE_UNSPECIFIED") {
    delete data.friends[f.user];
    presence.delete(f.user);
  } else {
    data.friends[f.user] = state;
  }
}

function onTyping(env) {
  const t = env.typing;
  if (!t || t.user === me()) return;
  let typers = typing.get(t.channel);
  if (!typers) typing.set(t.channel, (typers = new Map()));
  typers.set(t.user, Date.now() + TYPING_SHOWN_MS);
  setTimeout(renderTick, TYPING_SHOWN_MS + 50);
  renderTick();
}

function onPresence(user, p) {
  if (p) presence.set(user, { online: !!p.online, last: num(p.last_active_ms) });
  else presence.delete(user);
  renderTick();
}

function typingNames(channel) {
  const typers = typing.get(channel);
  if (!typers) return [];
  const now = Date.now();
  return [...typers].filter(([, until]) => until > now).map(([user]) => user);
}

function typingText(channel) {
  const names = typingNames(channel);
  if (!names.length) return "";
  if (names.length === 1) return `${names[0]} is typing…`;
  if (names.length === 2) return `${names[0]} and ${names[1]} are typing…`;
  return `${names.length} people are typing…`;
}

function presenceText(user) {
  const p = presence.get(user);
  if (!p) return "";
  return p.online ? "online" : lastSeen(p.last);
}

/** The tick of my message `seq`: sent, delivered (to all) or read (by all). */
function tickOf(c, seq) {
  const others =
    c.kind === "dm" ? [peerOf(c.channel)] : c.members.filter((u) => u !== me());
  if (!others.length) return "sent";
  const cursor = (u) => c.cursors[u] || [0, 0];
  if (others.every((u) => cursor(u)[1] >= seq)) return "read";
  if (others.every((u) => cursor(u)[0] >= seq)) return "delivered";
  return "sent";
}

// ------------------------------------------------------------ requests

function changed() {
  save();
  render();
  scheduleReceipts();
}

let flushing = false;
async function flushOutbox() {
  if (flushing || !client || !client.ready) return;
  flushing = true;
  try {
    for (;;) {
      const entry = data.outbox.find((e) => e.state === "pending");
      if (!entry || !client || !client.ready) break;
      try {
        const ack = await client.request("send", {
          channel: entry.channel,
          client_msg_id: entry.id,
          text: entry.text,
        });
        acked(entry, ack);
      } catch (error) {
        if (error.transient) {
          // kept: sent again (same client_msg_id) once the connection is back
          if (client && client.ready) setTimeout(flushOutbox, 3000);
          break;
        }
        entry.state = "failed";
        entry.error = error.readable;
        toast("Message not sent", error.readable);
      }
      changed();
    }
  } finally {
    flushing = false;
  }
}

function acked(entry, ack) {
  data.outbox = data.outbox.filter((e) => e !== entry);
  const seq = num(ack.seq);
  const channel = ack.channel || entry.channel;
  const c = ensureConv(channel);
  storeMsg(channel, {
    seq,
    sender: me(),
    text: entry.text,
    ts: num(ack.ts_ms),
    cmid: entry.id,
    system: false,
  });
  c.myRead = Math.max(c.myRead, seq);
  c.myDelivered = Math.max(c.myDelivered, seq);
  c.activity = Math.max(c.activity, localActivity());
  recomputeUnread(c);
}

function sendText(channel, text) {
  clearTimeout(typingTimer);
  typingSent = { channel: null, at: 0 }; // the next keystroke is news again
  data.outbox.push({ id: uuid(), channel, text, ts: Date.now(), state: "pending", error: null });
  const c = ensureConv(channel);
  c.activity = Math.max(c.activity, localActivity());
  forceBottom = true;
  changed();
  flushOutbox();
}

let receiptTimer = null;
function scheduleReceipts() {
  clearTimeout(receiptTimer);
  receiptTimer = setTimeout(sendReceipts, 250);
}

function looking() {
  return openChannel && document.visibilityState === "visible";
}

/** The open conversation is on screen: all of it counts as read here. */
function markSeen() {
  const c = looking() && data.convs[openChannel];
  if (!c || c.lastOther <= c.seen) return false;
  c.seen = c.lastOther;
  recomputeUnread(c);
  return true;
}

function sendReceipts() {
  if (!client || !client.ready || !data) return;
  if (markSeen()) changed();
  for (const c of Object.values(data.convs)) {
    if (c.left || c.kind === "other") continue;
    if (c.seen > c.myRead) receipt(c, "READ", c.seen);
    else if (c.lastOther > c.myDelivered && c.lastOther > c.myRead) receipt(c, "DELIVERED", c.lastOther);
  }
}

function receipt(c, kind, seq) {
  const key = `${c.channel}:${kind}`;
  if ((receiptsSent.get(key) || 0) >= seq) return;
  receiptsSent.set(key, seq);
  client.request("receipt", { channel: c.channel, seq, kind: RECEIPT[kind] }).then(
    () => {
      c.myDelivered = Math.max(c.myDelivered, seq);
      if (kind === "READ") c.myRead = Math.max(c.myRead, seq);
      recomputeUnread(c);
      save();
      render();
    },
    (error) => {
      receiptsSent.delete(key);
      if (!error.transient) {
        toast(`Could not mark “${convName(c)}” as ${kind.toLowerCase()}`, error.readable);
      }
    },
  );
}

function sendTyping() {
  const channel = openChannel;
  if (!channel || !client || !client.ready || noTyping.has(channel)) return;
  const c = data.convs[channel];
  if (!c || !canSend(c) || !$("composer").value.trim()) return;
  const now = Date.now();
  const wait = typingSent.at + TYPING_EVERY_MS - now;
  if (typingSent.channel === channel && wait > 0) {
    // still typing when the window ends: tell again then
    clearTimeout(typingTimer);
    typingTimer = setTimeout(sendTyping, wait);
    return;
  }
  typingSent = { channel, at: now };
  client.request("typing", { channel }).catch((error) => {
    if (error.transient || error.code === "RATE_LIMITED") return;
    noTyping.add(channel);
    toast(`Typing notice not sent to “${convName(c)}”`, error.readable);
  });
}

/** One page of history: the newest (before 0) or before a seq. */
async function loadHistory(channel, before, limit = 50) {
  const key = `${channel}:${before}`;
  if (loading.has(key) || !client) return;
  loading.add(key);
  render();
  try {
    const page = await client.request("history", { channel, before_seq: before, limit });
    const got = (page.messages || []).map(fromProto);
    for (const m of got) storeMsg(channel, m);
    if (before === 0) fetched.add(channel);
    // more = false: nothing before the oldest message of this page
    if (!page.more) noOlder.add(channel);
    if (before > 0 && got.length < limit) filledGaps.add(key);
    if (before > 0) keepFromBottom = true;
    save();
  } catch (error) {
    const c = data.convs[channel];
    if (error.code === "NOT_FOUND" && c && c.kind === "dm" && !msgs.get(channel)?.size) {
      delete data.convs[channel]; // a chat opened here with someone who does not exist
      if (openChannel === channel) closeConv();
      save();
    }
    if (!error.transient || before > 0) {
      toast(`Could not load the messages of “${c ? convName(c) : channel}”`, error.readable);
    }
  } finally {
    loading.delete(key);
    render();
  }
}

// ------------------------------------------------------------ rendering

let renderTimer = null;
/** Repaints soon (once for a burst of changes). */
function render() {
  if (renderTimer) return;
  renderTimer = setTimeout(renderNow, 16);
}

/** Repaints now. */
function renderNow() {
  clearTimeout(renderTimer);
  renderTimer = null;
  if (!session || !data) return;
  renderTick();
  renderMessages();
  const total = Object.values(data.convs).reduce((n, c) => n + unreadCount(c), 0);
  document.title = total ? `(${total}) Parley` : "Parley";
}

/** What changes with time alone (every second): the connection's retry
 * countdown, presence and "last seen", typing notices; not the messages. */
function renderTick() {
  if (!session || !data) return;
  renderConn();
  renderConvs();
  renderFriends();
  renderChatHead();
  if ($("members-dialog").open) renderMembers();
}

function avatar(name, kind) {
  let hash = 0;
  for (const ch of name) hash = (hash * 31 + ch.codePointAt(0)) % 997;
  const letter = kind === "sys" ? "!" : (name[0] || "?").toUpperCase();
  return h("span", { class: "avatar", "aria-hidden": "true", dataset: { color: String(hash % 8) } }, letter);
}

function dot(user) {
  const p = presence.get(user);
  const state = p ? (p.online ? "online" : "offline") : "unknown";
  return h("span", { class: "dot", dataset: { state }, "aria-hidden": "true" });
}

function renderConn() {
  const el = $("conn");
  el.dataset.state = conn.state;
  document.body.classList.toggle("is-offline", conn.state === "offline");
  // the live region says what happened; the countdown ticks beside it
  let text;
  let retry = "";
  if (conn.state === "online") text = "Online";
  else if (conn.state === "connecting") text = "Connecting…";
  else if (conn.state === "syncing") text = "Catching up…";
  else {
    text = `Offline: ${conn.detail || "no connection"}.`;
    const pending = data.outbox.filter((e) => e.state === "pending").length;
    if (pending) text += ` ${pending} unsent message${pending > 1 ? "s" : ""} will be sent when back.`;
    const wait = conn.retryAt ? Math.max(0, Math.ceil((conn.retryAt - Date.now()) / 1000)) : 0;
    if (!conn.manual) retry = wait ? `Retrying in ${wait} s` : "Retrying…";
  }
  setText($("conn-text"), text);
  setText($("conn-retry"), retry);
  $("retry-btn").hidden = conn.state !== "offline";
}

function renderConvs() {
  const convs = Object.values(data.convs).sort((a, b) => b.activity - a.activity);
  $("conv-empty").hidden = convs.length > 0;
  reconcile(
    $("conv-list"),
    convs.map((c) => ({
      key: c.channel,
      sig: c.kind,
      render: () =>
        h(
          "li",
          {},
          h(
            "button",
            { class: "conv", onclick: () => openConv(c.channel), dataset: { channel: c.channel } },
            h("span", { class: "avatar-wrap" }, avatar(convName(c), c.kind), c.kind === "dm" ? h("span", { class: "dot-slot" }) : null),
            h("span", { class: "conv-main" }, h("span", { class: "conv-name" }), h("span", { class: "conv-preview" })),
            h("span", { class: "conv-meta" }, h("time", { class: "conv-time" }), h("span", { class: "badge conv-unread" })),
          ),
        ),
      update: (li) => {
        const button = li.firstChild;
        const name = convName(c);
        const unread = unreadCount(c);
        const typingNow = typingText(c.channel);
        if (openChannel === c.channel) button.setAttribute("aria-current", "true");
        else button.removeAttribute("aria-current");
        setText(button.querySelector(".conv-name"), name);
        const p = c.preview;
        let preview = "";
        if (typingNow) preview = typingNow;
        else if (c.left) preview = "You are no longer a member";
        else if (p) preview = p.system || !p.sender ? p.text : `${p.sender === me() ? "You" : p.sender}: ${p.text}`;
        const previewEl = button.querySelector(".conv-preview");
        setText(previewEl, preview);
        previewEl.classList.toggle("is-typing", !!typingNow);
        const time = button.querySelector(".conv-time");
        setText(time, p && p.ts ? shortTime(p.ts) : "");
        const badge = button.querySelector(".conv-unread");
        badge.hidden = !unread;
        setText(badge, unread ? String(unread) : "");
        badge.setAttribute("aria-label", `${unread} unread`);
        const slot = button.querySelector(".dot-slot");
        if (slot) slot.replaceChildren(data.friends[peerOf(c.channel)] === "FRIENDS" ? dot(peerOf(c.channel)) : "");
        const state = c.kind === "dm" ? presenceText(peerOf(c.channel)) : "";
        button.setAttribute(
          "aria-label",
          [name, state, unread ? `${unread} unread` : "", preview].filter(Boolean).join(", "),
        );
      },
    })),
  );
  const unreadChats = Object.values(data.convs).filter((c) => unreadCount(c)).length;
  const badge = $("chats-badge");
  badge.hidden = !unreadChats;
  setText(badge, String(unreadChats));
  badge.setAttribute("aria-label", `${unreadChats} with unread messages`);
}

function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}

function personItem(user, actions, extra) {
  return {
    key: user,
    sig: actions.map((a) => a.label).join("|"),
    render: () =>
      h(
        "li",
        { class: "person", dataset: { user } },
        h("span", { class: "dot-slot" }),
        h("span", { class: "person-main" }, h("span", { class: "person-name" }, user), h("span", { class: "person-state" })),
        h(
          "span",
          { class: "person-actions" },
          actions.map((a) =>
            h("button", { class: a.class || "", onclick: a.run, "aria-label": `${a.label} ${user}` }, a.label),
          ),
        ),
      ),
    update: (li) => {
      li.querySelector(".dot-slot").replaceChildren(extra.dot ? dot(user) : "");
      setText(li.querySelector(".person-state"), extra.state ? extra.state() : "");
    },
  };
}

function renderFriends() {
  const entries = Object.entries(data.friends).sort(([a], [b]) => (a < b ? -1 : 1));
  const of = (state) => entries.filter(([, s]) => s === state).map(([u]) => u);
  const incoming = of("REQUEST_RECEIVED");
  reconcile(
    $("requests-in"),
    incoming.map((u) =>
      personItem(
        u,
        [
          { label: "Accept", class: "primary", run: () => changeFriends({ add: [u] }, `accept ${u}`) },
          { label: "Decline", run: () => changeFriends({ remove: [u] }, `decline ${u}`) },
        ],
        { state: () => "wants to be your friend" },
      ),
    ),
  );
  reconcile(
    $("requests-out"),
    of("REQUEST_SENT").map((u) =>
      personItem(u, [{ label: "Cancel", run: () => changeFriends({ remove: [u] }, `cancel the request to ${u}`) }], {
        state: () => "waiting for an answer",
      }),
    ),
  );
  reconcile(
    $("friends-list"),
    of("FRIENDS").map((u) =>
      personItem(
        u,
        [
          { label: "Message", run: () => openConv(dmChannel(me(), u)) },
          { label: "Remove", class: "danger", run: () => changeFriends({ remove: [u] }, `remove ${u}`) },
        ],
        { dot: true, state: () => presenceText(u) || "offline" },
      ),
    ),
  );
  for (const id of ["requests-in", "requests-out", "friends-list"]) {
    const list = $(id);
    list.dataset.empty = list.children.length ? "" : "none";
  }
  const badge = $("friends-badge");
  badge.hidden = !incoming.length;
  setText(badge, String(incoming.length));
  badge.setAttribute("aria-label", `${incoming.length} friend requests`);
}

function messageItems(c) {
  const channel = c.channel;
  const map = msgs.get(channel) || new Map();
  const sorted = [...map.values()].sort((a, b) => a.seq - b.seq);
  const items = [];
  const lowest = sorted.length ? sorted[0].seq : 0;
  const topKey = `${channel}:${lowest}`;
  if (fetched.has(channel) && !c.left && lowest !== 1 && !noOlder.has(channel) && sorted.length) {
    items.push([-1, gapItem("top", channel, lowest, "Load earlier messages", 50, topKey)]);
  }
  let previous = null;
  for (const m of sorted) {
    if (previous && m.seq > previous.seq + 1) {
      const missing = m.seq - previous.seq - 1;
      const key = `${channel}:${m.seq}`;
      if (!filledGaps.has(key)) {
        const label = `Show ${missing} earlier message${missing > 1 ? "s" : ""}`;
        items.push([m.seq - 0.25, gapItem(`gap${m.seq}`, channel, m.seq, label, Math.min(missing, 100), key)]);
      }
    }
    items.push([m.seq, messageItem(c, m)]);
    previous = m;
  }
  c.events.forEach((e, i) => {
    items.push([e.after + 0.5 + i / 1000, { key: e.key, sig: "e", render: () => h("li", { class: "event" }, e.text) }]);
  });
  const top = sorted.length ? sorted[sorted.length - 1].seq : 0;
  data.outbox
    .filter((e) => e.channel === channel)
    .forEach((e, i) => items.push([Math.max(top, c.lastSeq) + 1 + i, outboxItem(c, e)]));
  items.sort((a, b) => a[0] - b[0]);
  return items.map(([, item]) => item);
}

function gapItem(name, channel, before, label, limit, key) {
  const busy = loading.has(key);
  return {
    key: `gap:${name}`,
    sig: `${before}:${busy}`,
    render: () =>
      h(
        "li",
        { class: "gap" },
        h("button", { onclick: () => loadHistory(channel, before, limit), disabled: busy }, busy ? "Loading…" : label),
      ),
  };
}

function bubble(c, { mine, sender, system, text }) {
  const showSender = system || (!mine && c.kind === "group");
  return h(
    "li",
    { class: `msg ${system ? "system" : mine ? "mine" : "theirs"}` },
    h(
      "div",
      { class: "bubble" },
      showSender ? h("span", { class: "sender" }, system ? `${sender || "system"} · system message` : sender) : sr(mine ? "You: " : `${sender}: `),
      h("p", { class: "text" }, text),
      h("span", { class: "meta" }, h("time", {}), h("span", { class: "tick", role: "img" })),
    ),
    h(
      "div",
      { class: "failure", hidden: true },
      h("span", { class: "failure-text" }),
      h("button", { class: "retry" }, "Retry"),
      h("button", { class: "discard" }, "Delete"),
    ),
  );
}

const TICKS = {
  pending: ["◷", "Sending"],
  sent: ["✓", "Sent"],
  delivered: ["✓✓", "Delivered"],
  read: ["✓✓", "Read"],
  failed: ["!", "Not sent"],
};

function setTick(li, status, ts, error, entryId) {
  li.dataset.status = status || "";
  const time = li.querySelector("time");
  setText(time, ts ? shortTime(ts) : "");
  if (ts) time.dateTime = isoTime(ts);
  const tick = li.querySelector(".tick");
  if (status) {
    const [symbol, label] = TICKS[status];
    setText(tick, symbol);
    tick.setAttribute("aria-label", label);
    tick.title = label;
  }
  const failure = li.querySelector(".failure");
  failure.hidden = status !== "failed";
  if (status === "failed") {
    setText(failure.querySelector(".failure-text"), `Not sent: ${error}`);
    failure.querySelector(".retry").onclick = () => retryEntry(entryId);
    failure.querySelector(".discard").onclick = () => discardEntry(entryId);
  }
}

function messageItem(c, m) {
  const mine = m.sender === me();
  const key = m.cmid ? `c:${m.sender}:${m.cmid}` : `m:${m.seq}`;
  return {
    key,
    sig: "m",
    render: () => {
      const li = bubble(c, { mine, sender: m.sender, system: m.system, text: m.text });
      li.dataset.seq = String(m.seq);
      return li;
    },
    update: (li) => {
      li.dataset.seq = String(m.seq);
      setTick(li, mine && !m.system ? tickOf(c, m.seq) : "", m.ts);
    },
  };
}

function outboxItem(c, e) {
  return {
    key: `c:${me()}:${e.id}`,
    sig: "m",
    render: () => bubble(c, { mine: true, sender: me(), system: false, text: e.text }),
    update: (li) => setTick(li, e.state === "failed" ? "failed" : "pending", e.ts, e.error, e.id),
  };
}

function renderChatHead() {
  const c = openChannel && data.convs[openChannel];
  $("chat-none").hidden = !!c;
  $("chat-open").hidden = !c;
  if (!c) return;
  const name = convName(c);
  setText($("chat-title"), name);
  let sub = "";
  if (c.kind === "dm") {
    const peer = peerOf(c.channel);
    sub = data.friends[peer] === "FRIENDS" ? presenceText(peer) || "offline" : "not a friend: no presence";
  } else if (c.kind === "group") {
    if (c.left) sub = "You are no longer a member";
    else if (c.members.length) sub = `${c.members.length} members: ${c.members.join(", ")}`;
  } else if (c.kind === "sys") {
    sub = "Notices from the service";
  }
  setText($("chat-sub"), sub);
  $("members-btn").hidden = c.kind !== "group" || c.left;
  setText($("typing"), typingText(c.channel));
  const writable = canSend(c);
  $("composer-form").hidden = !writable;
  $("readonly-note").hidden = writable;
  setText(
    $("readonly-note"),
    c.kind === "sys" ? "System messages cannot be answered." : "You are no longer a member of this group.",
  );
  setText($("composer-label"), `Message to ${name}`);
}

function renderMessages() {
  const c = openChannel && data.convs[openChannel];
  if (!c) return;
  const list = $("messages");
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
  const fromBottom = list.scrollHeight - list.scrollTop;
  reconcile(list, messageItems(c));
  if (keepFromBottom) list.scrollTop = list.scrollHeight - fromBottom;
  else if (atBottom || forceBottom) list.scrollTop = list.scrollHeight;
  keepFromBottom = false;
  forceBottom = false;
}

// ------------------------------------------------------------ actions

function openConv(channel) {
  if (!data.convs[channel]) ensureConv(channel);
  const switched = openChannel !== channel;
  openChannel = channel;
  $("chat-view").dataset.view = "chat";
  showTab("chats");
  if (switched) {
    $("messages").replaceChildren();
    $("messages").setAttribute("aria-busy", "true");
    forceBottom = true;
  }
  if (markSeen()) save();
  renderNow();
  $("messages").setAttribute("aria-busy", "false");
  const c = data.convs[channel];
  if (canSend(c)) $("composer").focus();
  else $("messages").focus();
  if (!fetched.has(channel) && !c.left && client && client.ready) loadHistory(channel, 0);
  scheduleReceipts();
}

function closeConv() {
  openChannel = null;
  $("chat-view").dataset.view = "list";
  render();
}

function retryEntry(id) {
  const entry = data.outbox.find((e) => e.id === id);
  if (!entry) return;
  entry.state = "pending";
  entry.error = null;
  changed();
  flushOutbox();
}

function discardEntry(id) {
  data.outbox = data.outbox.filter((e) => e.id !== id);
  changed();
  $("composer").focus();
}

async function changeFriends(change, what) {
  try {
    await client.request("change_friends", { add: change.add || [], remove: change.remove || [] });
    return true;
  } catch (error) {
    toast(`Could not ${what}`, error.readable);
    return false;
  }
}

function requireClient() {
  if (client && client.ready) return true;
  toast("You are offline", "This needs the connection; try again once it is back.");
  return false;
}

function showTab(tab) {
  $("tab-chats").setAttribute("aria-pressed", String(tab === "chats"));
  $("tab-friends").setAttribute("aria-pressed", String(tab === "friends"));
  $("chats-panel").hidden = tab !== "chats";
  $("friends-panel").hidden = tab !== "friends";
}

function toast(title, detail) {
  const box = $("toasts");
  const item = h(
    "div",
    { class: "toast" },
    h("p", {}, h("strong", {}, title), detail ? ` ${detail}` : ""),
    h("button", { class: "toast-close", "aria-label": "Dismiss", onclick: () => item.remove() }, "×"),
  );
  box.append(item);
  while (box.children.length > 4) box.firstChild.remove();
  setTimeout(() => item.remove(), 12000);
}

function dialogError(dialog, text) {
  setText(dialog.querySelector(".form-error"), text || "");
}

function openDialog(dialog) {
  dialogError(dialog, "");
  dialog.showModal();
  const first = dialog.querySelector("input");
  if (first) first.focus();
}

function ids(text) {
  return text
    .split(/[\s,]+/)
    .map((s) => s.trim())
    .filter(Boolean);
}

// ------------------------------------------------------------ members dialog

function renderMembers() {
  const dialog = $("members-dialog");
  const c = openChannel && data.convs[openChannel];
  if (!c || c.kind !== "group") return;
  setText($("members-title"), `Members of ${convName(c)}`);
  reconcile(
    $("members-list"),
    c.members.map((u) =>
      personItem(
        u,
        u === me()
          ? []
          : [
              {
                label: "Remove",
                class: "danger",
                run: () => groupRequest(dialog, "change_members", { group_id: c.channel.slice(2), add: [], remove: [u] }, `remove ${u}`),
              },
            ],
        { dot: true, state: () => (u === me() ? "you" : presenceText(u) || "") },
      ),
    ),
  );
}

async function groupRequest(dialog, kind, body, what) {
  if (!requireClient()) return false;
  dialogError(dialog, "");
  try {
    await client.request(kind, body);
    return true;
  } catch (error) {
    dialogError(dialog, `Could not ${what}: ${error.readable}`);
    return false;
  }
}

async function openMembers() {
  const c = data.convs[openChannel];
  if (!c || c.kind !== "group") return;
  renderMembers();
  openDialog($("members-dialog"));
  const others = c.members.filter((u) => u !== me() && data.friends[u] !== "FRIENDS");
  if (others.length && client && client.ready) {
    try {
      const list = await client.request("query_presence", { users: others });
      for (const p of list.users || []) presence.set(p.user, { online: !!p.online, last: num(p.last_active_ms) });
      renderMembers();
    } catch (error) {
      dialogError($("members-dialog"), `Presence unavailable: ${error.readable}`);
    }
  }
}

// ------------------------------------------------------------ session

function showLogin(message) {
  $("chat-view").hidden = true;
  $("login-view").hidden = false;
  setText($("login-error"), message || "");
  $(message ? "login-password" : "login-user").focus();
  document.title = "Parley";
}

function startSession() {
  data = loadData(session.user);
  msgs.clear();
  for (const [channel, list] of Object.entries(data.recent || {})) {
    const map = new Map();
    for (const m of list) map.set(m.seq, m);
    msgs.set(channel, map);
  }
  for (const entry of data.outbox) if (entry.state !== "failed") entry.state = "pending";
  $("login-view").hidden = true;
  $("chat-view").hidden = false;
  setText($("me-name"), session.user);
  conn = { state: "connecting", detail: "", retryAt: 0, manual: false };
  client = new ChatClient(session, data.inboxSeq, {
    envelope: onEnvelope,
    typing: onTyping,
    presence: onPresence,
    status: (state, info) => {
      conn = { state, detail: info.detail || "", retryAt: info.retryAt || 0, manual: !!info.manual };
      renderNow();
    },
    online: () => {
      receiptsSent.clear();
      saveNow();
      flushOutbox();
      scheduleReceipts();
      const open = openChannel && data.convs[openChannel];
      if (open && !open.left && !fetched.has(openChannel)) loadHistory(openChannel, 0);
      renderNow();
    },
    signedOut: (reason) => endSession(`You were signed out: ${reason}. Please log in again.`, false),
  });
  client.start();
  renderNow();
  $("new-chat-btn").focus();
}

function resetMemory() {
  msgs.clear();
  presence.clear();
  typing.clear();
  fetched.clear();
  noOlder.clear();
  filledGaps.clear();
  receiptsSent.clear();
  noTyping.clear();
  openChannel = null;
}

function endSession(message, forget) {
  const user = session && session.user;
  if (data && !forget) saveNow();
  if (forget && user) localStorage.removeItem(stateKey(user));
  if (client) client.stop();
  client = null;
  session = null;
  data = null;
  sessionStorage.removeItem(SESSION_KEY);
  resetMemory();
  // the hidden chat view must not keep saying "online" for the next login
  conn = { state: "offline", detail: "signed out", retryAt: 0, manual: false };
  $("conn").dataset.state = conn.state;
  $("login-user").value = user || "";
  $("chat-view").dataset.view = "list";
  showLogin(message);
}

async function logout() {
  const ending = session;
  const stopping = client;
  client = null;
  if (stopping) await stopping.stop(); // a graceful DISCONNECT: offline at once
  let note = "You are logged out.";
  try {
    await api.logout(ending.token);
  } catch (error) {
    if (error.code !== "UNAUTHORIZED") {
      note = `You are logged out here, but the server could not end the session: ${error.readable}`;
    }
  }
  endSession(note, true);
}

async function onLogin(event) {
  event.preventDefault();
  const action = (event.submitter && event.submitter.value) || "login";
  const user = $("login-user").value.trim();
  const password = $("login-password").value;
  const error = $("login-error");
  if (!user || !password) {
    setText(error, "Enter your user id and your password.");
    return;
  }
  const buttons = $("login-form").querySelectorAll("button");
  buttons.forEach((b) => (b.disabled = true));
  setText(error, action === "register" ? "Creating the account…" : "Logging in…");
  try {
    if (action === "register") await api.register(user, password);
    const device = deviceId();
    const answer = await api.login(user, password, device);
    session = {
      user: answer.user_id || user,
      device,
      token: answer.token,
      expiresAt: answer.expires_at,
      mqtt: answer.mqtt,
    };
    sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
    $("login-password").value = "";
    setText(error, "");
    startSession();
  } catch (failure) {
    const what = action === "register" ? "Could not create the account" : "Could not log in";
    setText(error, `${what}: ${failure.readable}`);
  } finally {
    buttons.forEach((b) => (b.disabled = false));
  }
}

// ------------------------------------------------------------ wiring

function wire() {
  $("login-form").addEventListener("submit", onLogin);
  $("logout-btn").addEventListener("click", logout);
  $("retry-btn").addEventListener("click", () => client && client.reconnectNow());
  $("tab-chats").addEventListener("click", () => showTab("chats"));
  $("tab-friends").addEventListener("click", () => showTab("friends"));
  $("back-btn").addEventListener("click", closeConv);
  $("members-btn").addEventListener("click", openMembers);

  const composer = $("composer");
  const submit = () => {
    const text = composer.value;
    if (!openChannel || !text.trim()) return;
    composer.value = "";
    grow();
    sendText(openChannel, text);
  };
  const grow = () => {
    composer.style.height = "auto";
    composer.style.height = `${Math.min(composer.scrollHeight, 160)}px`;
  };
  $("composer-form").addEventListener("submit", (event) => {
    event.preventDefault();
    submit();
  });
  composer.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      submit();
    }
  });
  composer.addEventListener("input", () => {
    grow();
    sendTyping();
  });

  const list = $("messages");
  list.addEventListener("scroll", () => {
    if (list.scrollTop > 40 || !openChannel) return;
    const top = list.querySelector(".gap:first-child button");
    if (top && !top.disabled) top.click();
  });

  for (const dialog of document.querySelectorAll("dialog")) {
    for (const cancel of dialog.querySelectorAll(".cancel")) {
      cancel.addEventListener("click", () => dialog.close());
    }
  }

  $("new-chat-btn").addEventListener("click", () => {
    $("new-chat-user").value = "";
    openDialog($("new-chat-dialog"));
  });
  $("new-chat-dialog").querySelector("form").addEventListener("submit", (event) => {
    event.preventDefault();
    const dialog = $("new-chat-dialog");
    const other = $("new-chat-user").value.trim();
    if (!ID_RE.test(other)) return dialogError(dialog, "A user id is 1 to 64 letters, digits, “_” or “-”.");
    if (other === me()) return dialogError(dialog, "That is you: enter someone else's user id.");
    dialog.close();
    openConv(dmChannel(me(), other));
  });

  $("new-group-btn").addEventListener("click", () => {
    for (const id of ["new-group-id", "new-group-name", "new-group-members"]) $(id).value = "";
    openDialog($("new-group-dialog"));
  });
  $("new-group-dialog").querySelector("form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const dialog = $("new-group-dialog");
    const groupId = $("new-group-id").value.trim();
    const name = $("new-group-name").value.trim();
    const members = ids($("new-group-members").value);
    if (!groupId) return dialogError(dialog, "Enter a group id.");
    if (!requireClient()) return;
    const ok = await groupRequest(dialog, "create_group", { group_id: groupId, name, members }, "create the group");
    if (!ok) return;
    const c = ensureConv(`g:${groupId}`);
    if (!c.known) c.name = name; // the members come with the group's event
    dialog.close();
    changed();
    openConv(c.channel);
  });

  $("add-member-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const dialog = $("members-dialog");
    const users = ids($("add-member-id").value);
    if (!users.length) return;
    const groupId = openChannel.slice(2);
    if (await groupRequest(dialog, "change_members", { group_id: groupId, add: users, remove: [] }, `add ${users.join(", ")}`)) {
      $("add-member-id").value = "";
    }
  });
  $("leave-btn").addEventListener("click", async () => {
    const dialog = $("members-dialog");
    const groupId = openChannel.slice(2);
    if (await groupRequest(dialog, "leave_group", { group_id: groupId }, "leave the group")) dialog.close();
  });

  $("friend-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = $("friend-id");
    const user = input.value.trim();
    if (!user) return;
    if (user === me()) {
      toast("Could not send the request", "That is you: enter someone else's user id.");
      return;
    }
    if (!requireClient()) return;
    if (await changeFriends({ add: [user] }, `send a friend request to ${user}`)) input.value = "";
  });

  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") {
      scheduleReceipts();
      if (client) client.reconnectNow();
    }
  });
  addEventListener("pagehide", saveNow);
  setInterval(renderTick, 1000);
}

function boot() {
  wire();
  let stored = null;
  try {
    stored = JSON.parse(sessionStorage.getItem(SESSION_KEY));
  } catch {
    stored = null;
  }
  if (stored && stored.token && (!stored.expiresAt || stored.expiresAt * 1000 > Date.now())) {
    session = stored;
    startSession();
  } else {
    if (stored) sessionStorage.removeItem(SESSION_KEY);
    showLogin(stored ? "Your session expired: please log in again." : "");
  }
}

boot();
