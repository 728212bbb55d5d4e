from __future__ import annotations

import json
import time

from django.core.management.base import BaseCommand

from monitoring.client import MonitoringClient


class Command(BaseCommand):
    help = "Live terminal view of the running server's monitoring summary (--once: print JSON and exit)."

    def add_arguments(self, parser):
        MonitoringClient.add_arguments(parser)
        parser.add_argument("--once", action="store_true")
        parser.add_argument("--interval", type=float, default=2.0)

    def handle(self, *args, url, user, once, interval, **options):
        client = MonitoringClient(url, user)
        if once:
            self.stdout.write(json.dumps(client.get(), indent=2))
            return
        try:
            while True:
                self.stdout.write("\x1b[2J\x1b[H" + render(client.get()))
                time.sleep(interval)  # the refresh period of the live view
        except KeyboardInterrupt:
            pass


def render(s: dict) -> str:
    pool, streams, lat = s["pool"], s["streams"], s["latency"]
    lines = [
        f"DocChat monitor   LLM {s['llm']['provider']} · {s['llm']['model']}",
        f"DB pool     {pool.get('in_use', 0)}/{pool.get('max', '-')} in use, {pool.get('waiting', 0)} waiting, "
        f"{pool.get('timeouts', 0)} timeouts, Postgres connections {pool.get('postgres_connections')}",
        f"streams     {streams['active_generations']} generating, {streams['queued']} queued, "
        f"{streams['websocket_connections']} sockets, {s['tokens_per_second']} tokens/s",
        f"loop lag    {s['loop_lag_ms']['last']} ms (max {s['loop_lag_ms']['max']} ms)",
        f"jobs        {s['jobs']['running']} running, {s['jobs']['queued']} queued, "
        f"{s['jobs']['failed_last_hour']} failed in the last hour",
    ]
    lines += [f"latency     {name:<12} p50 {v['p50']} s  p95 {v['p95']} s  (n={v['count']})" for name, v in lat.items()]
    lines += [
        f"breaker     {b['name']:<10} {b['state']:<12} failed {b['failures']}/{b['calls']} ({b['rule']})"
        for b in s["breakers"]
    ]
    lines += [f"ALERT       {a['message']}" for a in s["alerts"]] or ["alerts      none"]
    return "\n".join(lines) + "\n"
