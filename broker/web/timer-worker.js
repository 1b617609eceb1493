// Interval timers in a worker: a hidden tab throttles the page's own
// timers (to once a minute after a while), which would starve the MQTT
// keep-alive and the presence heartbeat; a worker's timers keep time.
// Served from this origin, so the page's Content-Security-Policy allows it.
const timers = new Map();
onmessage = ({ data }) => {
  if (data.op === "set") {
    timers.set(data.id, setInterval(() => postMessage(data.id), data.ms));
  } else {
    clearInterval(timers.get(data.id));
    timers.delete(data.id);
  }
};
