from __future__ import annotations

from django.core.management.base import BaseCommand

from monitoring.client import MonitoringClient


class Command(BaseCommand):
    help = "Show the running server's circuit breakers, or --reset NAME (llm, embedding, retrieval)."

    def add_arguments(self, parser):
        MonitoringClient.add_arguments(parser)
        parser.add_argument("--reset", metavar="NAME")

    def handle(self, *args, url, user, reset, **options):
        client = MonitoringClient(url, user)
        breakers = client.reset_breaker(reset)["breakers"] if reset else client.get("breakers")["breakers"]
        if reset:
            self.stdout.write(self.style.SUCCESS(f"breaker {reset} reset"))
        for b in breakers:
            retry = f", retry in {b['retry_in']} s" if b["retry_in"] else ""
            error = f", last error: {b['last_error']}" if b["last_error"] else ""
            self.stdout.write(
                f"{b['name']:<10} {b['state']:<12} failed {b['failures']}/{b['calls']} ({b['rule']}){retry}{error}"
            )
