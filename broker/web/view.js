// Small DOM helpers of the web client: element construction (text only,
// never HTML from data), keyed list reconciliation, time formatting.

/** h("li", {class: "x", onclick: f}, child, "text", …) */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value == null || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    else if (name === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child == null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

/** Text only visible to screen readers. */
export function sr(text) {
  return h("span", { class: "sr-only" }, text);
}

/**
 * Makes `container`'s children match `items` ({key, sig, render(), update?(el)}),
 * in order, reusing the element of a key while its `sig` is unchanged (so a
 * live region announces only what is new).
 */
export function reconcile(container, items) {
  const existing = new Map();
  for (const el of Array.from(container.children)) existing.set(el.dataset.key, el);
  let previous = null;
  for (const item of items) {
    let el = existing.get(item.key);
    if (el) {
      existing.delete(item.key);
      if (el.dataset.sig !== item.sig) {
        const fresh = item.render();
        fresh.dataset.key = item.key;
        fresh.dataset.sig = item.sig;
        el.replaceWith(fresh);
        el = fresh;
      }
    } else {
      el = item.render();
      el.dataset.key = item.key;
      el.dataset.sig = item.sig;
    }
    if (item.update) item.update(el);
    const wanted = previous ? previous.nextSibling : container.firstChild;
    if (el !== wanted) container.insertBefore(el, wanted);
    previous = el;
  }
  for (const el of existing.values()) el.remove();
}

const sameDay = (a, b) =>
  a.getFullYear() === b.getFullYear() && a.getMonth() === b.getMonth() && a.getDate() === b.getDate();

/** "14:02", "Mon 14:02" or "3 Jan 14:02". */
export function shortTime(ms) {
  if (!ms) return "";
  const date = new Date(ms);
  const now = new Date();
  const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  if (sameDay(date, now)) return time;
  if (now - date < 6 * 86400000) return `${date.toLocaleDateString([], { weekday: "short" })} ${time}`;
  return `${date.toLocaleDateString([], { day: "numeric", month: "short" })} ${time}`;
}

/** "last seen just now", "last seen 5 min ago", "last seen Mon 14:02". */
export function lastSeen(ms) {
  if (!ms) return "offline";
  const ago = Date.now() - ms;
  if (ago < 60000) return "last seen just now";
  if (ago < 3600000) return `last seen ${Math.floor(ago / 60000)} min ago`;
  return `last seen ${shortTime(ms)}`;
}

export function isoTime(ms) {
  return ms ? new Date(ms).toISOString() : "";
}
