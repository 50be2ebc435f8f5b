"""manage.py demo: the one-command local demo (migrate, seed, a Celery worker, the web server)."""

import signal
import subprocess
import sys

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from annotate.management.commands.seed_demo import DEMO_USERS

WORKER_ARGS = ["-m", "celery", "-A", "config", "worker", "-Q", "default,gpu,preflight", "--pool=solo", "-l", "warning"]


def _stop_on_sigterm(signum, frame):
    raise SystemExit(0)


class Command(BaseCommand):
    help = "Run the demo: migrate, seed the demo project, start a Celery worker and the web server."

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--addr", default="127.0.0.1")
        parser.add_argument("--no-worker", action="store_true", help="Do not start a Celery worker.")

    def handle(self, *args, port: int, addr: str, no_worker: bool, **options):
        # On PostgreSQL migrations run as the owner role (config/dbroles.py); SQLite has one login.
        database = "owner" if "owner" in settings.DATABASES else "default"
        call_command("migrate", database=database, interactive=False, verbosity=0)
        call_command("seed_demo", stdout=self.stdout)
        worker = None
        if not no_worker:
            # Its own session, so Ctrl-C reaches only this process, which then stops the worker once, cleanly.
            worker = subprocess.Popen([sys.executable, *WORKER_ARGS], cwd=settings.BASE_DIR, start_new_session=True)
            self.stdout.write(f"Celery worker started (pid {worker.pid}, queues default, gpu and preflight).")
        previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
        url = f"http://{addr}:{port}/"
        self.stdout.write(self.style.SUCCESS(f"Goldset demo at {url}"))
        self.stdout.write("Log in as " + ", ".join(f"{u} / {p}" for u, _, p in DEMO_USERS) + ". Ctrl-C stops it.")
        try:
            call_command("runserver", f"{addr}:{port}", use_reloader=False)
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)
            if worker is not None:
                stop_worker(worker)
                self.stdout.write("Celery worker stopped.")


def stop_worker(worker: subprocess.Popen, timeout: float = 20) -> int:
    """SIGTERM (Celery's warm shutdown: finish the current task), then SIGKILL if it hangs."""
    if worker.poll() is None:
        worker.terminate()
        try:
            worker.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    return worker.returncode
