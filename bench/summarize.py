"""Writes bench/results/LATEST.md from the JSON reports of one bench/run."""
import json
import os
import platform
import sys

runs_dir = sys.argv[1]
runs = {}
for name in sorted(os.listdir(runs_dir)):
    if name.endswith(".json"):
        with open(os.path.join(runs_dir, name)) as f:
            report = json.load(f)
        runs[(report["label"], report["scenario"])] = report


def get(report, *path):
    value = report
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def ratio(a, b):
    return f"{a / b:.2f}" if a is not None and b else "n/a"


cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print("# Parley benchmark: latest run\n")
print(f"Machine: {os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}; "
      "load generator on the same machine, loopback.\n")
print("| broker | scenario | accepted/s | delivered/s | ack p50 ms | ack p99 ms | delivery p99 ms | errors | lost | RSS growth/conn (bytes) |")
print("|---|---|---|---|---|---|---|---|---|---|")
for (label, scenario), r in sorted(runs.items()):
    print(f"| {label} | {scenario} | {r.get('accepted_per_sec', 0):.0f} | {r.get('delivered_per_sec', 0):.0f} | "
          f"{get(r, 'ack_latency', 'p50_ms')} | {get(r, 'ack_latency', 'p99_ms')} | "
          f"{get(r, 'delivery_latency', 'p99_ms')} | {r.get('errors')} | {r.get('lost')} | "
          f"{get(r, 'broker_memory', 'growth_per_connection_bytes')} |")
dm = runs.get(("parley", "dm"))
print("\n## Ratios (same run, same machine)\n")
print("| ratio | throughput | delivery p99 | RSS per idle connection |")
print("|---|---|---|---|")
for ref in ("mosquitto", "rumqttd"):
    relay, idle_ref, idle_p = runs.get((ref, "relay")), runs.get((ref, "idle")), runs.get(("parley", "idle"))
    if dm and relay:
        print(f"| Parley dm / {ref} relay | {ratio(dm.get('accepted_per_sec'), relay.get('accepted_per_sec'))} | "
              f"{ratio(get(dm, 'delivery_latency', 'p99_ms'), get(relay, 'delivery_latency', 'p99_ms'))} | "
              f"{ratio(get(idle_p or {}, 'broker_memory', 'growth_per_connection_bytes'), get(idle_ref or {}, 'broker_memory', 'growth_per_connection_bytes'))} |")
