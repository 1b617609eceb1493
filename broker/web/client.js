// The protocol side of the web client: the HTTP account API, and one MQTT 5
// connection over WebSocket (MQTT.js) speaking chat.v1 (protobufjs, with the
// codecs generated from proto/chat.proto in vendor/chat.pb.js).
//
// ChatClient connects with the session token, subscribes to the user's
// inbox, its device's reply topic and its presence topics, catches up with
// Sync from the last inbox_seq it applied, and hands every inbox envelope
// to the application exactly once and in inbox_seq order (live envelopes
// that arrive ahead of a gap wait for the Sync that fills it). It
// reconnects with exponential backoff and says why it is offline.

import mqtt from "./vendor/mqtt.esm.js";

/** The chat.v1 codecs (registered by vendor/chat.pb.js). */
export const v1 = globalThis.protobuf.roots.default.chat.v1;

export const ID_RE = /^[A-Za-z0-9_-]{1,64}$/;

/** The direct channel of two users: ids in byte-wise order (ASCII ids). */
export function dmChannel(a, b) {
  return a < b ? `dm:${a}:${b}` : `dm:${b}:${a}`;
}

/** A 64-bit protobuf value as a number (seqs and times fit in 2^53). */
export function num(value) {
  if (typeof value === "number") return value;
  if (value == null) return 0;
  return Number(value.toString());
}

const ERROR_NAMES = Object.fromEntries(
  Object.entries(v1.ErrorCode).map(([name, code]) => [code, name]),
);


/** An error the server (or the connection) answered, readable as is. */
export class ServerError extends Error {
  constructor(code, message) {
    super(message || "no details");
    this.code = code;
  }

  /** The server's message as a sentence (it may start with a user id, so
   * its case is kept): "carol is not a member of group team." */
  get readable() {
    return /[.!?]$/.test(this.message) ? this.message : `${this.message}.`;
  }

  /** True when the request may simply be retried once online again. */
  get transient() {
    return this.code === "OFFLINE" || this.code === "TIMEOUT" || this.code === "NETWORK";
  }
}

// ---------------------------------------------------------------- HTTP API

async function post(path, body, token) {
  const headers = {};
  if (body) headers["Content-Type"] = "application/json";
  if (token) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(path, {
      method: "POST",
      headers,
      body: body ? JSON.stringify(body) : undefined,
      cache: "no-store",
    });
  } catch {
    throw new ServerError("NETWORK", "cannot reach the server; check your connection");
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    // not JSON: the status says enough
  }
  if (!response.ok) {
    const error = data && data.error;
    throw new ServerError(
      (error && error.code) || `HTTP ${response.status}`,
      (error && error.message) || `the server answered ${response.status}`,
    );
  }
  return data;
}

export const api = {
  register: (user, password) => post("/v1/register", { user_id: user, password }),
  login: (user, password, device) =>
    post("/v1/login", { user_id: user, password, device_id: device }),
  logout: (token) => post("/v1/logout", null, token),
};

/** The WebSocket URL to use from a login answer: wss for an https page. */
export function socketUrl(endpoints) {
  const secure = location.protocol === "https:";
  const url = secure ? endpoints && endpoints.wss : (endpoints && (endpoints.ws || endpoints.wss));
  if (url) return url;
  throw new ServerError(
    "UNAVAILABLE",
    secure
      ? "this broker has no secure WebSocket listener (wss_addr) for an HTTPS page"
      : "this broker advertises no WebSocket endpoint",
  );
}

// ------------------------------------------------------------- MQTT client

/** CONNACK / DISCONNECT reason codes (MQTT 5) that end the session. */
const SIGNED_OUT = {
  134: "the server refused the session token (bad user name or password)",
  135: "the session is no longer valid (signed out, or the password changed)",
  152: "this device was signed out",
};
const TAKEN_OVER = 142;
const REASONS = {
  136: "the server is unavailable",
  137: "the server is busy",
  139: "the server is shutting down",
  141: "the connection timed out",
  151: "too many devices of this account are connected",
};

/**
 * setInterval / clearInterval that keep time in a hidden tab: backed by
 * timer-worker.js, or the page's own timers if a worker cannot start. MQTT.js
 * takes it as its `timerVariant` for the keep-alive.
 */
export const timer = (() => {
  const native = {
    set: (fn, ms) => setInterval(fn, ms),
    clear: (id) => clearInterval(id),
  };
  let worker;
  try {
    worker = new Worker("/timer-worker.js");
  } catch {
    return native;
  }
  const callbacks = new Map();
  let next = 1;
  worker.onmessage = ({ data }) => {
    const fn = callbacks.get(data);
    if (fn) fn();
  };
  return {
    set(fn, ms) {
      const id = next++;
      callbacks.set(id, fn);
      worker.postMessage({ op: "set", id, ms });
      return id;
    },
    clear(id) {
      if (!callbacks.delete(id)) return;
      worker.postMessage({ op: "clear", id });
    },
  };
})();

const REQUEST_TIMEOUT_MS = 15000;
const HEARTBEAT_MS = 5000;
const KEEPALIVE_S = 10;
const MAX_BACKOFF_MS = 30000;

export class ChatClient {
  /**
   * session: {user, device, token, mqtt}; lastSeq: the largest inbox_seq
   * applied; handlers: {envelope(env), typing(env), presence(user, p|null),
   * status(state, detail), online(), signedOut(reason)}.
   */
  constructor(session, lastSeq, handlers) {
    this.session = session;
    this.lastSeq = lastSeq;
    this.h = handlers;
    this.mq = null;
    this.ready = false; // subscribed: requests can be answered
    this.stopped = false;
    this.pending = new Map();
    this.counter = 0;
    this.prefix = Math.random().toString(36).slice(2, 8);
    this.buffer = new Map(); // inbox_seq -> envelope waiting for a gap to fill
    this.syncing = false;
    this.syncAgain = false;
    this.attempt = 0;
    this.retryTimer = null;
    this.heartbeat = null;
    this.onBrowserOnline = () => this.reconnectNow();
    this.onBrowserOffline = () => this.drop("the browser is offline");
    addEventListener("online", this.onBrowserOnline);
    addEventListener("offline", this.onBrowserOffline);
  }

  get user() {
    return this.session.user;
  }

  start() {
    this.connect();
  }

  /** Ends the connection gracefully (offline at once); resolves when closed. */
  stop() {
    this.stopped = true;
    removeEventListener("online", this.onBrowserOnline);
    removeEventListener("offline", this.onBrowserOffline);
    clearTimeout(this.retryTimer);
    timer.clear(this.heartbeat);
    const mq = this.mq;
    this.mq = null;
    this.ready = false;
    this.failPending("signed out");
    if (!mq) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, 2000);
      mq.end(false, {}, () => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  /** Reconnects at once (the "retry now" button, the browser back online). */
  reconnectNow() {
    if (this.stopped || this.mq) return;
    clearTimeout(this.retryTimer);
    this.connect();
  }

  /** Drops the connection (it will be retried with backoff). */
  drop(why) {
    if (this.mq) {
      this.dropReason = why;
      this.mq.end(true);
    }
  }

  connect() {
    let url;
    try {
      url = socketUrl(this.session.mqtt);
    } catch (error) {
      this.h.status("offline", { detail: error.readable });
      return;
    }
    const { user, device, token } = this.session;
    this.h.status("connecting", {});
    this.dropReason = null;
    this.refusal = null;
    const mq = mqtt.connect(url, {
      protocolVersion: 5,
      clientId: `${user}:${device}`,
      username: user,
      password: token,
      clean: true,
      keepalive: KEEPALIVE_S,
      reschedulePings: false,
      reconnectPeriod: 0,
      connectTimeout: 10000,
      resubscribe: false,
      queueQoSZero: false,
      timerVariant: timer,
      properties: { sessionExpiryInterval: 0 },
    });
    this.mq = mq;
    mq.on("connect", () => this.onConnect(mq));
    mq.on("message", (topic, payload) => {
      if (this.mq === mq) this.onMessage(topic, payload);
    });
    mq.on("error", (error) => {
      if (typeof error.code === "number") this.refusal = error.code;
      else this.dropReason = this.dropReason || error.message;
    });
    mq.on("disconnect", (packet) => {
      this.refusal = packet.reasonCode;
    });
    mq.on("close", () => this.onClose(mq));
  }

  async onConnect(mq) {
    const { user, device } = this.session;
    this.attempt = 0;
    this.h.status("syncing", {});
    try {
      const granted = await mq.subscribeAsync({
        [`inbox/${user}`]: { qos: 1 },
        [`reply/${user}/${device}`]: { qos: 1 },
        [`presence/+/${user}`]: { qos: 1 },
      });
      const refused = granted.filter((g) => g.qos > 2).map((g) => g.topic);
      if (refused.length) throw new Error(`subscription refused: ${refused.join(", ")}`);
      if (this.mq !== mq) return;
      this.ready = true;
      timer.clear(this.heartbeat);
      this.heartbeat = timer.set(() => {
        if (this.ready && this.mq === mq) mq.publish(`hb/${user}/${device}`, "", { qos: 0 });
      }, HEARTBEAT_MS);
      await this.sync();
      if (this.mq !== mq) return;
      this.h.status("online", {});
      this.h.online();
    } catch (error) {
      if (this.mq !== mq) return;
      this.dropReason = error.readable || error.message;
      mq.end(true);
    }
  }

  onClose(mq) {
    if (this.mq !== mq) return;
    this.mq = null;
    this.ready = false;
    timer.clear(this.heartbeat);
    mq.removeAllListeners("connect");
    this.failPending("the connection was lost");
    if (this.stopped) return;
    const code = this.refusal;
    if (code in SIGNED_OUT) {
      this.stopped = true;
      this.h.signedOut(SIGNED_OUT[code]);
      return;
    }
    if (code === TAKEN_OVER) {
      this.h.status("offline", {
        detail: "this device connected again from another window",
        manual: true,
      });
      return;
    }
    const delay = Math.min(MAX_BACKOFF_MS, 1000 * 2 ** this.attempt) * (0.5 + Math.random() / 2);
    this.attempt = Math.min(this.attempt + 1, 10);
    const detail =
      REASONS[code] ||
      this.dropReason ||
      (navigator.onLine === false ? "the browser is offline" : "cannot reach the server");
    this.h.status("offline", { detail, retryAt: Date.now() + delay });
    this.retryTimer = setTimeout(() => this.reconnectNow(), delay);
  }

  failPending(why) {
    for (const [id, pending] of this.pending) {
      clearTimeout(pending.timer);
      pending.reject(new ServerError("OFFLINE", why));
      this.pending.delete(id);
    }
  }

  /**
   * Publishes a Request with body `kind` ("send", "sync", …) and resolves
   * with the Reply's body, or rejects with a ServerError.
   */
  request(kind, body, timeout = REQUEST_TIMEOUT_MS) {
    if (!this.ready || !this.mq) {
      return Promise.reject(
        new ServerError("OFFLINE", "you are offline; this will work once the connection is back"),
      );
    }
    const { user, device } = this.session;
    const requestId = `${this.prefix}-${++this.counter}`;
    const payload = v1.Request.encode({ request_id: requestId, [kind]: body }).finish();
    const mq = this.mq;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(requestId);
        reject(new ServerError("TIMEOUT", "the server did not answer in time"));
      }, timeout);
      this.pending.set(requestId, { resolve, reject, timer });
      mq.publish(`req/${user}/${device}`, payload, { qos: 1 }, (error) => {
        if (error && this.pending.has(requestId)) {
          clearTimeout(timer);
          this.pending.delete(requestId);
          reject(new ServerError("OFFLINE", error.message));
        }
      });
    });
  }

  onMessage(topic, payload) {
    const { user, device } = this.session;
    try {
      if (topic === `reply/${user}/${device}`) this.onReply(v1.Reply.decode(payload));
      else if (topic === `inbox/${user}`) this.onEnvelope(v1.Envelope.decode(payload));
      else if (topic.startsWith("presence/")) {
        const subject = topic.split("/")[1];
        this.h.presence(subject, payload.length ? v1.Presence.decode(payload) : null);
      }
    } catch (error) {
      console.error("cannot handle a message on", topic, error);
    }
  }

  onReply(reply) {
    const pending = this.pending.get(reply.request_id);
    if (!pending) return; // answered after its time-out
    this.pending.delete(reply.request_id);
    clearTimeout(pending.timer);
    if (reply.body === "error") {
      const code = ERROR_NAMES[reply.error.code] || "ERROR";
      pending.reject(new ServerError(code, reply.error.message));
    } else {
      pending.resolve(reply[reply.body] || {});
    }
  }

  onEnvelope(env) {
    const seq = num(env.inbox_seq);
    if (seq === 0) {
      this.h.typing(env); // live only, never stored
      return;
    }
    this.offer(env, seq);
    if (this.buffer.size && !this.syncing) {
      // a gap before a live envelope: fetch what is missing
      clearTimeout(this.gapTimer);
      this.gapTimer = setTimeout(() => this.sync().catch(() => {}), 500);
    }
  }

  /** Applies `env` if it is the next one; keeps it if it is early. */
  offer(env, seq) {
    if (seq <= this.lastSeq) return; // a redelivery
    if (seq > this.lastSeq + 1) {
      this.buffer.set(seq, env);
      return;
    }
    this.apply(env, seq);
    while (this.buffer.has(this.lastSeq + 1)) {
      const next = this.lastSeq + 1;
      const waiting = this.buffer.get(next);
      this.buffer.delete(next);
      this.apply(waiting, next);
    }
    for (const early of this.buffer.keys()) if (early <= this.lastSeq) this.buffer.delete(early);
  }

  apply(env, seq) {
    this.lastSeq = seq;
    try {
      this.h.envelope(env, seq);
    } catch (error) {
      console.error("cannot apply inbox envelope", seq, error);
    }
  }

  /** Sync from the last applied inbox_seq until `more` is false. */
  async sync() {
    if (this.syncing) {
      this.syncAgain = true;
      return;
    }
    this.syncing = true;
    try {
      do {
        this.syncAgain = false;
        for (;;) {
          const page = await this.request("sync", { after_inbox_seq: this.lastSeq, limit: 500 });
          for (const env of page.events || []) this.offer(env, num(env.inbox_seq));
          if (!page.more || !(page.events || []).length) break;
        }
      } while (this.syncAgain);
    } finally {
      this.syncing = false;
    }
  }
}
