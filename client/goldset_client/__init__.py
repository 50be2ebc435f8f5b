"""goldset-client: a Python client for Goldset's REST API (``/api/v1/``).

    from goldset_client import Goldset
    gs = Goldset("https://goldset.example.com", token="gs_...")

Each area of the API is one attribute (``projects``, ``items``, ``queue``, ``annotations``, ``reports``,
``rubrics``, ``evalsets``, ``snapshots``, ``jobs``), a small class over the shared HTTP layer (``_http.Http``:
bearer token, retries with backoff on 429/503, errors as exceptions carrying the server's problem
document). Work that runs on the server's workers (imports, reports, audits, contamination checks,
preflights, training jobs) is polled through the status URL the server hands back, with progress shown.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from goldset_client._http import Http
from goldset_client.errors import (
    ApiError,
    Conflict,
    Forbidden,
    GoldsetError,
    ImportFailed,
    InvalidRequest,
    NotFound,
    Unauthorized,
    WorkFailed,
)
from goldset_client.progress import progress as _progress

try:  # Parses the export's long lines several times faster than the standard library.
    import orjson as _orjson
except ImportError:  # pragma: no cover - a platform without its wheels
    _orjson = None


def _load(line: bytes) -> Any:
    if _orjson is not None:
        try:
            return _orjson.loads(line)
        except _orjson.JSONDecodeError:
            pass  # what orjson does not take (an integer beyond 64 bits): the standard library's answer
    return json.loads(line)


def _records(response: httpx.Response) -> Iterator[Any]:
    """The JSON value on each non-blank line of a streamed JSONL body, as the bytes arrive."""
    rest = b""
    for chunk in response.iter_bytes():
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        for line in lines:
            if line.strip():
                yield _load(line)
    if rest.strip():
        yield _load(rest)

__all__ = [
    "ApiError",
    "Conflict",
    "Forbidden",
    "Goldset",
    "GoldsetError",
    "ImportFailed",
    "InvalidRequest",
    "NotFound",
    "Unauthorized",
    "WorkFailed",
]

UPLOAD_CHUNK = 1024 * 1024
FINISHED = ("succeeded", "failed", "cancelled")


class _Area:
    def __init__(self, gs: Goldset):
        self._gs = gs
        self._http = gs._http

    def _pages(self, path: str, params: dict | None = None) -> Iterator[dict]:
        """Every item of a keyset-paged list, page after page."""
        params = {k: v for k, v in (params or {}).items() if v is not None}
        while True:
            page = self._http.json("GET", path, params=params)
            yield from page["items"]
            if not page["next_cursor"]:
                return
            params["cursor"] = page["next_cursor"]

    def _poll(
        self,
        state: dict,
        *,
        what: str,
        timeout: float | None,
        poll: float,
        percent: Callable[[dict], float] | None = None,
        describe: Callable[[dict], str] | None = None,
    ) -> dict:
        """Poll ``state["status_url"]`` until the work has finished, with a progress display (0..100 %)."""
        if state["status"] in FINISHED:
            return state
        percent = percent or (lambda s: 100 * float(s.get("progress") or 0))
        describe = describe or (lambda s: f"{what}: {s.get('message') or s['status']}")
        bar = _progress(self._gs.show_progress, total=100, desc=describe(state), unit="%")
        shown = 0.0
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while state["status"] not in FINISHED:
                if deadline is not None and time.monotonic() > deadline:
                    raise GoldsetError(f"{what} is still {state['status']} after {timeout} s ({state['status_url']}).")
                time.sleep(poll)
                state = self._http.json("GET", state["status_url"])
                done = max(0.0, min(100.0, percent(state)))
                bar.update(max(0.0, done - shown))
                shown = max(shown, done)
                bar.set_description(describe(state))
        finally:
            bar.close()
        return state


class Projects(_Area):
    def list(self) -> Iterator[dict]:
        """Every project you may see (all pages)."""
        cursor = None
        while True:
            page = self._http.json("GET", "/projects", params={"cursor": cursor} if cursor else None)
            yield from page["items"]
            cursor = page["next_cursor"]
            if not cursor:
                return

    def get(self, slug: str) -> dict:
        return self._http.json("GET", f"/projects/{slug}")

    def create(self, *, name: str, slug: str, task_kinds: list[str], **settings: Any) -> dict:
        """Make a project (admins; an admin-scope token)."""
        return self._http.json(
            "POST", "/projects", json={"name": name, "slug": slug, "task_kinds": task_kinds, **settings}
        )

    def update(self, slug: str, **settings: Any) -> dict:
        return self._http.json("PATCH", f"/projects/{slug}", json=settings)

    def members(self, slug: str) -> list[dict]:
        return self._http.json("GET", f"/projects/{slug}/members")

    def add_member(self, slug: str, username: str, *, role: str | None = None) -> dict:
        return self._http.json("PUT", f"/projects/{slug}/members/{username}", json={"role": role})

    def remove_member(self, slug: str, username: str) -> dict:
        return self._http.json("DELETE", f"/projects/{slug}/members/{username}")


def _format_of(path: Path, file_format: str | None) -> str:
    if file_format:
        return file_format
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    raise GoldsetError(f"Cannot tell the format of {path.name}: pass file_format='jsonl' or 'csv'.")


class Items(_Area):
    def list(self, project: str, **filters: Any) -> Iterator[dict]:
        """A project's items in id order, every page (filters: split, kind, provenance, state, import_batch)."""
        params = {k: v for k, v in filters.items() if v is not None}
        while True:
            page = self._http.json("GET", f"/projects/{project}/items", params=params)
            yield from page["items"]
            if not page["next_cursor"]:
                return
            params["cursor"] = page["next_cursor"]

    def import_file(
        self,
        project: str,
        path: str | Path,
        *,
        file_format: str | None = None,
        mode: str = "all_or_nothing",
        provenance: str = "human",
        filename: str | None = None,
        wait: bool = True,
        timeout: float | None = None,
        raise_on_rejected: bool = False,
    ) -> dict:
        """Import a JSONL or CSV file, streamed from disk (memory stays flat), and wait for the import to end.

        Raises ``ImportFailed``, whose message lists every bad line, when nothing was imported (or, with
        ``raise_on_rejected``, when ``mode="skip_bad"`` left rows out). Returns the import's final state
        (or its first state with ``wait=False``)."""
        path = Path(path)
        fmt = _format_of(path, file_format)
        size = path.stat().st_size
        bar = _progress(self._gs.show_progress, total=size, desc=f"Uploading {path.name}", unit="B")

        def body() -> Iterator[bytes]:
            with open(path, "rb") as handle:
                while chunk := handle.read(UPLOAD_CHUNK):
                    bar.update(len(chunk))
                    yield chunk

        try:
            response = self._http.request(
                "POST",
                f"/projects/{project}/imports/rows",
                params={"file_format": fmt, "mode": mode, "provenance": provenance, "filename": filename or path.name},
                headers={
                    "Content-Type": "text/csv" if fmt == "csv" else "application/x-ndjson",
                    "Content-Length": str(size),
                },
                body=body,
            )
        finally:
            bar.close()
        result = response.json()
        if not wait:
            return result
        result = self.wait(result, timeout=timeout)
        return self._check(result, raise_on_rejected=raise_on_rejected)

    def import_rows(self, project: str, rows: Iterable[dict | str], **options: Any) -> dict:
        """Import rows (dicts, or JSON lines) as one JSONL import. The rows are spooled to a temporary file,
        never held in memory, then streamed up; options as for ``import_file``."""
        bar = _progress(self._gs.show_progress, desc="Preparing rows", unit="rows")
        with tempfile.TemporaryDirectory(prefix="goldset-rows-") as tmp:
            path = Path(tmp) / (options.pop("filename", None) or "rows.jsonl")
            with open(path, "w", encoding="utf-8") as out:
                for row in rows:
                    out.write(row if isinstance(row, str) else json.dumps(row, ensure_ascii=False))
                    out.write("\n")
                    bar.update(1)
            bar.close()
            return self.import_file(project, path, file_format="jsonl", **options)

    def wait(self, result: dict, *, timeout: float | None = None, poll: float = 1.0) -> dict:
        """Poll an import's status URL until it ends (the worker runs imports above the inline size)."""
        if result["status"] in FINISHED:
            return result
        bar = _progress(self._gs.show_progress, total=result.get("bytes_total") or None, desc="Importing", unit="B")
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while result["status"] not in FINISHED:
                if deadline is not None and time.monotonic() > deadline:
                    raise GoldsetError(f"Import {result['id']} still {result['status']} after {timeout} s.")
                time.sleep(poll)
                before = result.get("bytes_read", 0)
                result = self._http.json("GET", result["status_url"])
                bar.update(max(0, result.get("bytes_read", 0) - before))
                bar.set_description(f"Importing: {result.get('rows_seen', 0):,} rows read")
        finally:
            bar.close()
        return result

    def errors(self, result: dict) -> list[dict]:
        """Every rejected line of an import, as {line, field, message}."""
        with self._http.stream(result["errors_url"]) as response:
            return list(_records(response))

    def _check(self, result: dict, *, raise_on_rejected: bool) -> dict:
        if result["status"] != "succeeded" or (raise_on_rejected and result["rows_rejected"]):
            raise ImportFailed(result, self.errors(result))
        return result


def _params(**filters: Any) -> dict:
    params = {}
    for name, value in filters.items():
        if value is None:
            continue
        if isinstance(value, datetime):
            value = value.isoformat()
        params[name] = [value] if isinstance(value, str) else value
    return params


def _example(record: dict, layout: str) -> dict | None:
    """One exported item in a training layout, from its agreed result; None when it has no place there."""
    result = record.get("result") or {}
    payload = result.get("payload") or {}
    if result.get("status") not in ("consensus", "adjudicated") or not payload:
        return None
    base = {"item_id": record["item_id"], "prompt": record["prompt"], "provenance": record["provenance"]}
    responses = record.get("responses") or []
    if layout == "preference":
        chosen, rejected = payload.get("chosen"), payload.get("rejected")
        if record["kind"] != "preference" or payload.get("choice") != "response" or None in (chosen, rejected):
            return None
        return {**base, "chosen": responses[chosen]["text"], "rejected": responses[rejected]["text"]}
    if layout == "sft":
        if record["kind"] != "gold" or payload.get("action") not in ("accept", "edit", "write"):
            return None
        return {**base, "completion": payload.get("answer", "")}
    raise GoldsetError(f"Unknown layout {layout!r}: use records, sft or preference.")


_JSON_FIELDS = ("messages", "responses", "metadata", "result", "annotations", "adjudications")


def _records_for_dataset(url: str, token: str, project: str, params: dict, layout: str, nonce: str):
    """Rows for ``datasets.Dataset.from_generator`` (module level, so ``datasets`` can fingerprint it; ``nonce``
    makes every call a fresh export rather than a cached one)."""
    gs = Goldset(url, token, progress=False)
    try:
        for record in gs.annotations.export(project, **params):
            if layout == "records":
                yield {k: json.dumps(v, ensure_ascii=False) if k in _JSON_FIELDS else v for k, v in record.items()}
            else:
                example = _example(record, layout)
                if example is not None:
                    yield example
    finally:
        gs.close()


class Annotations(_Area):
    def export(
        self,
        project: str,
        *,
        kind: str | list[str] | None = None,
        state: str | list[str] | None = None,
        split: str | list[str] | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
    ) -> Iterator[dict]:
        """Every item with every reviewer's annotations (with revisions), consensus and adjudications, streamed
        one item at a time (admins)."""
        params = _params(kind=kind, state=state, split=split, since=since, until=until)
        with self._http.stream(f"/projects/{project}/annotations/export", params=params) as response:
            yield from _records(response)

    def examples(self, project: str, *, layout: str = "preference", **filters: Any) -> Iterator[dict]:
        """Agreed items as training examples: ``preference`` {prompt, chosen, rejected} or ``sft``
        {prompt, completion}; items without an agreed answer of that shape are left out."""
        for record in self.export(project, **filters):
            example = _example(record, layout)
            if example is not None:
                yield example

    def to_dataset(self, project: str, *, layout: str = "records", cache_dir: str | None = None, **filters: Any):
        """The export as a ``datasets.Dataset`` (written to Arrow files as it streams, so memory stays flat):
        ``records`` (every item; nested fields as JSON text), ``sft`` or ``preference`` (see ``examples``)."""
        from datasets import Dataset

        gen_kwargs = {
            "url": self._http.base,
            "token": self._gs._token,
            "project": project,
            "params": filters,
            "layout": layout,
            "nonce": uuid.uuid4().hex,
        }
        return Dataset.from_generator(_records_for_dataset, gen_kwargs=gen_kwargs, cache_dir=cache_dir)


class Queue(_Area):
    """Scripted reviewing: the same queue, leases and checks as the page, blind in the same way."""

    def __init__(self, gs: Goldset):
        super().__init__(gs)
        self._after: dict[int, dict | None] = {}

    def next(self, project: str) -> dict | None:
        """Your current item (leased to you), or None when nothing is left for you."""
        return self._http.json("POST", f"/projects/{project}/queue/next")["task"]

    def submit(self, task: dict, *, next: bool = True, **answer: Any) -> dict | None:
        """Answer a task, naming responses by position (``source=1``, ``choice=2``, ``scores={...}``); returns
        your next task (None when nothing is left)."""
        result = self._http.json("POST", task["submit_url"], params={"next": next}, json=answer)
        self._after[task["lease_id"]] = result["next"]
        return result["next"]

    def skip(self, task: dict, *, next: bool = True) -> dict | None:
        result = self._http.json("POST", task["skip_url"], params={"next": next})
        self._after[task["lease_id"]] = result["next"]
        return result["next"]

    def tasks(self, project: str) -> Iterator[dict]:
        """Tasks one after another until none is left; submit or skip each before taking the next."""
        task = self.next(project)
        while task is not None:
            yield task
            if task["lease_id"] not in self._after:
                raise GoldsetError(f"Submit or skip task {task['lease_id']} before asking for the next one.")
            task = self._after.pop(task["lease_id"])


class Reports(_Area):
    def agreement(
        self, project: str, *, version_id: int | None = None, make: bool = True, timeout: float = 600, poll: float = 2
    ) -> dict | None:
        """The agreement report of the data as it is now (admins and adjudicators); made and waited for when
        ``make``, else None when none was made yet."""
        params = {"version_id": version_id} if version_id is not None else None
        report = self._http.json("GET", f"/projects/{project}/report", params=params)
        if report["status"] == "none":
            if not make:
                return None
            report = self._http.json("POST", f"/projects/{project}/report", params=params)
        deadline = time.monotonic() + timeout
        while report["status"] not in FINISHED:
            if time.monotonic() > deadline:
                raise GoldsetError(f"The agreement report is still {report['status']} after {timeout} s.")
            time.sleep(poll)
            report = self._http.json("GET", report["status_url"])
        if report["status"] != "succeeded":
            raise GoldsetError(f"The agreement report failed: {report['message']}")
        return report["result"]


class Rubrics(_Area):
    def list(self, project: str) -> list[dict]:
        return self._http.json("GET", f"/projects/{project}/rubrics")


def _evalset_records(url: str, token: str, version_id: int, layout: str, nonce: str):
    """Rows for ``datasets.Dataset.from_generator`` (see ``_records_for_dataset``)."""
    gs = Goldset(url, token, progress=False)
    try:
        for record in gs.evalsets.export(version_id, layout):
            if layout == "goldset":
                yield {
                    k: json.dumps(v, ensure_ascii=False) if isinstance(v, (dict, list)) else v
                    for k, v in record.items()
                }
            else:
                yield record
    finally:
        gs.close()


class EvalSets(_Area):
    """Frozen eval set versions (admins): read them to evaluate a model, never to train one."""

    def list(self, project: str | None = None) -> Iterator[dict]:
        """Every frozen version, oldest first (of one project when given)."""
        return self._pages("/evalsets/versions", {"project": project})

    def get(self, version_id: int) -> dict:
        """One version: its sha256, counts, agreement, refusals and the layouts it can be exported in."""
        return self._http.json("GET", f"/evalsets/versions/{version_id}")

    def manifest(self, version_id: int, layout: str = "goldset") -> dict:
        """manifest.json of one layout's export: the file's sha256, bytes and record counts."""
        return self._http.json("GET", f"/evalsets/versions/{version_id}/export/{layout}/manifest")

    def export(self, version_id: int, layout: str = "goldset") -> Iterator[dict]:
        """A version's records in one layout (``goldset``, ``prompt-completion``, ``messages``, ``preference``,
        ``openai-sft``, ``openai-dpo``), streamed one record at a time."""
        with self._http.stream(f"/evalsets/versions/{version_id}/export/{layout}") as response:
            yield from _records(response)

    def download(self, version_id: int, layout: str = "goldset", directory: str | Path = ".") -> Path:
        """Write ``<name>.<layout>.jsonl`` and its ``.manifest.json`` into ``directory``, streamed to disk, and check
        the file's sha256 against the manifest (and, for ``goldset``, the version's own sha256). A file that does
        not match is removed and ``GoldsetError`` raised; the file appears only once it is complete."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        version = self.get(version_id)
        manifest = self.manifest(version_id, layout)
        path = directory / manifest["file"]
        partial = path.with_name(path.name + ".partial")
        sha = hashlib.sha256()
        bar = _progress(self._gs.show_progress, total=manifest["bytes"], desc=f"Downloading {path.name}", unit="B")
        try:
            with self._http.stream(f"/evalsets/versions/{version_id}/export/{layout}") as response:
                with open(partial, "wb") as out:
                    for chunk in response.iter_bytes():
                        sha.update(chunk)
                        out.write(chunk)
                        bar.update(len(chunk))
        finally:
            bar.close()
        expected = {manifest["sha256"]} | ({version["sha256"]} if layout == "goldset" else set())
        if expected != {sha.hexdigest()}:
            partial.unlink(missing_ok=True)
            raise GoldsetError(
                f"{path.name} does not match its manifest (sha256 {sha.hexdigest()}, expected {manifest['sha256']}):"
                " download it again."
            )
        partial.replace(path)
        path.with_name(path.name[: -len(".jsonl")] + ".manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        return path

    def to_dataset(self, version_id: int, layout: str = "prompt-completion", *, cache_dir: str | None = None):
        """A version's export as a ``datasets.Dataset`` (written to Arrow files as it streams; in the
        ``goldset`` layout nested fields are JSON text)."""
        from datasets import Dataset

        gen_kwargs = {
            "url": self._http.base,
            "token": self._gs._token,
            "version_id": version_id,
            "layout": layout,
            "nonce": uuid.uuid4().hex,
        }
        return Dataset.from_generator(_evalset_records, gen_kwargs=gen_kwargs, cache_dir=cache_dir)


def _id(thing: dict | int) -> int:
    return thing["id"] if isinstance(thing, dict) else int(thing)


class Snapshots(_Area):
    """Training snapshots (admins): frozen, hashed, audited and contamination-checked approved data."""

    def list(self) -> Iterator[dict]:
        return self._pages("/training/snapshots")

    def get(self, snapshot: dict | int) -> dict:
        return self._http.json("GET", f"/training/snapshots/{_id(snapshot)}")

    def create(
        self, name: str, projects: list[str], *, wait: bool = True, timeout: float | None = 3600, **filters: Any
    ) -> dict:
        """Freeze the approved train-split data of the projects (filters as on the page: ``include_llm_judged``,
        ``adjudicated_only``, ``min_agreement``, ``provenances``, ``kinds``, ``rubric_version_id``, ``rubric_min``,
        ``decided_from``, ``decided_until``, ``exclude_items``, ``from_snapshot`` with ``exclude_findings`` or
        ``exclude_contaminated``, ``note``). With ``wait``, waits for its audit when a worker runs it."""
        body = {"name": name, "projects": projects, **{k: _plain(v) for k, v in filters.items() if v is not None}}
        snapshot = self._http.json("POST", "/training/snapshots", json=body)
        audit = snapshot["latest_audit"]
        if wait and audit is not None and audit["status"] not in FINISHED:
            self._wait_audit(audit, timeout=timeout)
            snapshot = self.get(snapshot)
        return snapshot

    def _wait_audit(self, audit: dict, *, timeout: float | None, poll: float = 2) -> dict:
        audit = self._poll(audit, what=f"Audit {audit['id']}", timeout=timeout, poll=poll)
        if audit["status"] != "succeeded":
            raise WorkFailed(f"Audit {audit['id']}", audit)
        return audit

    def audit(self, snapshot: dict | int, *, wait: bool = True, timeout: float | None = 3600) -> dict:
        """Audit the snapshot again; returns the audit (its findings once it ran; ``open_blocks`` lists the blocking
        findings that stop jobs until acknowledged)."""
        audit = self._http.json("POST", f"/training/snapshots/{_id(snapshot)}/audits")
        return self._wait_audit(audit, timeout=timeout) if wait else audit

    def acknowledge(self, audit: dict | int, finding: str, reason: str) -> dict:
        """Let jobs start despite one blocking finding, saying why (kept in every job's record and manifest)."""
        return self._http.json(
            "POST", f"/training/audits/{_id(audit)}/acknowledgements", json={"finding": finding, "reason": reason}
        )

    def check_contamination(self, snapshot: dict | int, *, wait: bool = True, timeout: float | None = 3600) -> dict:
        """Check the snapshot against every frozen eval set version on a worker; returns the run, whose
        ``verdict["passed"]`` says whether the snapshot may be trained on."""
        run = self._http.json("POST", f"/training/snapshots/{_id(snapshot)}/contamination-checks")
        if not wait:
            return run
        run = self._poll(run, what=f"Contamination check of snapshot {_id(snapshot)}", timeout=timeout, poll=2)
        if run["status"] != "succeeded":
            raise WorkFailed("Contamination check", run)
        return run


def _plain(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


def _job_percent(job: dict) -> float:
    return float(job.get("percent") or 0)


def _job_line(job: dict) -> str:
    if job["status"] == "queued":
        place = job.get("queue_place")
        return f"Job {job['id']} queued" + (f" (place {place})" if place else "")
    if job["status"] == "running" and job.get("total_steps"):
        loss = f", loss {job['loss']:.4g}" if job.get("loss") is not None else ""
        eta = f", {job['eta_seconds']} s left" if job.get("eta_seconds") is not None else ""
        return f"Job {job['id']} {job['phase']}: step {job['step']}/{job['total_steps']}{loss}{eta}"
    return f"Job {job['id']} {job['status']}"


class Jobs(_Area):
    """QLoRA SFT / DPO jobs (admins): a preflight on a worker, then the job on the gpu queue."""

    def preflight(
        self,
        snapshot: dict | int,
        base_model: str,
        *,
        method: str = "sft",
        config: dict | None = None,
        wait: bool = True,
        timeout: float | None = 1800,
        poll: float = 2,
    ) -> dict:
        """Check a job's config against the base model and snapshot on a worker (no job is queued)."""
        body = {"snapshot_id": _id(snapshot), "base_model": base_model, "method": method, "config": config or {}}
        preflight = self._http.json("POST", "/training/preflights", json=body)
        if not wait:
            return preflight
        return self._poll(preflight, what=f"Preflight {preflight['id']}", timeout=timeout, poll=poll)

    def create(
        self,
        snapshot: dict | int,
        base_model: str,
        *,
        method: str = "sft",
        config: dict | None = None,
        timeout: float | None = 1800,
        poll: float = 2,
    ) -> dict:
        """Preflight a job (waiting for it, with progress) and queue the job it passed; raises ``WorkFailed``
        listing every problem the preflight found. ``config``: TrainingConfig fields to change."""
        preflight = self.preflight(snapshot, base_model, method=method, config=config, timeout=timeout, poll=poll)
        if preflight["status"] != "succeeded":
            raise WorkFailed(f"Preflight {preflight['id']}", preflight, (preflight.get("result") or {}).get("errors"))
        return self._http.json("POST", preflight["job_url"])

    def get(self, job: dict | int) -> dict:
        return self._http.json("GET", f"/training/jobs/{_id(job)}")

    def list(self, status: str | None = None) -> Iterator[dict]:
        return self._pages("/training/jobs", {"status": status})

    def wait(
        self, job: dict | int, *, timeout: float | None = None, poll: float = 5, raise_on_failure: bool = True
    ) -> dict:
        """Poll a job until it ends, showing its phase, step, loss and time left; returns its final state.
        Raises ``WorkFailed`` (with the job's error) when it failed or was cancelled, unless told not to."""
        state = job if isinstance(job, dict) and "status_url" in job else self.get(job)
        state = self._poll(
            state, what=f"Job {state['id']}", timeout=timeout, poll=poll, percent=_job_percent, describe=_job_line
        )
        if raise_on_failure and state["status"] != "succeeded":
            raise WorkFailed(f"Job {state['id']}", state)
        return state

    def metrics(self, job: dict | int) -> Iterator[dict]:
        """Every logged step (loss, learning rate, DPO reward margins), oldest first."""
        return self._pages(f"/training/jobs/{_id(job)}/metrics")

    def cancel(self, job: dict | int) -> dict:
        """Cancel a queued job, or ask a running one to stop at its next step (its checkpoint is kept)."""
        return self._http.json("POST", f"/training/jobs/{_id(job)}/cancel")

    def retry(self, job: dict | int) -> dict:
        """Queue a fresh job like a failed or cancelled one."""
        return self._http.json("POST", f"/training/jobs/{_id(job)}/retry")

    def resume(self, job: dict | int) -> dict:
        """Queue a job that continues from a failed or cancelled job's last checkpoint."""
        return self._http.json("POST", f"/training/jobs/{_id(job)}/resume")

    def artifacts(self, job: dict | int) -> list[dict]:
        """The files of a finished job's adapter: {path, bytes, url}."""
        return self._http.json("GET", f"/training/jobs/{_id(job)}/artifacts")

    def download(self, job: dict | int, directory: str | Path) -> Path:
        """Download a finished job's adapter (weights, tokenizer, manifest.json) into ``directory``, streamed to
        disk; load it with ``peft.PeftModel.from_pretrained(base, directory)``."""
        directory = Path(directory)
        files = self.artifacts(job)
        bar = _progress(self._gs.show_progress, total=sum(f["bytes"] for f in files), desc="Adapter", unit="B")
        try:
            for f in files:
                target = directory.joinpath(*f["path"].split("/"))
                if directory.resolve() not in target.resolve().parents:
                    raise GoldsetError(f"The server named an artifact outside the folder: {f['path']!r}.")
                target.parent.mkdir(parents=True, exist_ok=True)
                with self._http.stream(f["url"]) as response, open(target, "wb") as out:
                    for chunk in response.iter_bytes():
                        out.write(chunk)
                        bar.update(len(chunk))
        finally:
            bar.close()
        return directory


class Goldset:
    """A client for one Goldset server, acting as the owner of ``token`` (a personal API token).

    ``progress``: show progress bars for uploads and long waits. ``retries``/``backoff``: how 429 and 503
    answers are retried. ``transport``: an httpx transport (tests, proxies)."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        progress: bool = True,
        timeout: float = 60.0,
        retries: int = 5,
        backoff: float = 0.5,
        transport: httpx.BaseTransport | None = None,
    ):
        self._token = token
        self.show_progress = progress
        self._http = Http(url, token, timeout=timeout, retries=retries, backoff=backoff, transport=transport)
        self.projects = Projects(self)
        self.items = Items(self)
        self.queue = Queue(self)
        self.annotations = Annotations(self)
        self.reports = Reports(self)
        self.rubrics = Rubrics(self)
        self.evalsets = EvalSets(self)
        self.snapshots = Snapshots(self)
        self.jobs = Jobs(self)

    def me(self) -> dict:
        """Who the token acts as, with their roles and the token's scope."""
        return self._http.json("GET", "/me")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Goldset:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
