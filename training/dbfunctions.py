"""The gpu worker's writes to its job, as PostgreSQL functions: the only writes the trainer role can make.

The trainer role has SELECT on the job table and nothing more: it cannot UPDATE a job or INSERT a
progress row. It calls these ``SECURITY DEFINER`` functions, owned by the owner role, which

- first compare the caller's secret with the sha256 issued for that job when it was queued
  (``training_jobsecret``, a table the trainer role cannot read), so a worker writes only the job it
  was sent;
- claim a queued job (queued → running), or end a running one (→ succeeded, failed, or cancelled when
  a cancel was asked for): no other status change;
- while the job runs, write the heartbeat and only the columns named in ``TrainingJob.WORKER_FIELDS``,
  and append progress rows for that job.

``search_path`` is pinned (pg_temp last) and every table is schema-qualified, so no object the caller
creates can stand in for ours. The SQL is generated from the models and WORKER_FIELDS, and
``config.dbroles.sync_roles`` (re)creates it after every migrate: a new worker-written field needs
one more name in WORKER_FIELDS and its migration, nothing here.
"""

from __future__ import annotations

from config.sqltext import column as _col
from config.sqltext import ident as _q
from config.sqltext import literal as _lit
from config.sqltext import text_array as _array
from training.models import JobProgress, JobSecret, PreflightSecret, TrainingJob, TrainingPreflight

CLAIM = "goldset_job_claim"
UPDATE = "goldset_job_update"
FINISH = "goldset_job_finish"
PROGRESS = "goldset_job_progress_add"
PREFLIGHT_CLAIM = "goldset_preflight_claim"
PREFLIGHT_PROGRESS = "goldset_preflight_progress"
PREFLIGHT_FINISH = "goldset_preflight_finish"
# Argument types, as GRANT EXECUTE and DROP FUNCTION name a function.
SIGNATURES = {
    CLAIM: "bigint, text, text",
    UPDATE: "bigint, text, jsonb",
    FINISH: "bigint, text, text, text, jsonb",
    PROGRESS: "bigint, text, jsonb",
    PREFLIGHT_CLAIM: "bigint, text, text",
    PREFLIGHT_PROGRESS: "bigint, text, double precision, text",
    PREFLIGHT_FINISH: "bigint, text, boolean, text, jsonb",
}
ENDINGS = (TrainingJob.Status.SUCCEEDED, TrainingJob.Status.FAILED, TrainingJob.Status.CANCELLED)
# Progress columns the database fills itself.
PROGRESS_OWN = ("id", "job", "created_at")


def progress_fields() -> list[str]:
    """The progress columns a worker sends: every JobProgress field but its id, job and timestamp."""
    return [f.name for f in JobProgress._meta.concrete_fields if f.name not in PROGRESS_OWN]


def _progress_unique_step() -> str:
    """The name of the constraint that keeps one progress row per (job, phase, step)."""
    for constraint in JobProgress._meta.constraints:
        if list(getattr(constraint, "fields", ())) == ["job", "phase", "step"]:
            return constraint.name
    raise LookupError("JobProgress lost its unique (job, phase, step) constraint: the worker would log steps twice.")


def function_sql(schema: str) -> list[str]:
    """CREATE OR REPLACE statements for the four job-write functions in ``schema``."""
    s = _q(schema)
    job = f"{s}.{_q(TrainingJob._meta.db_table)}"
    secret = f"{s}.{_q(JobSecret._meta.db_table)}"
    progress = f"{s}.{_q(JobProgress._meta.db_table)}"
    status, pk = _col(TrainingJob, "status"), _col(TrainingJob, "id")
    heartbeat = _col(TrainingJob, "heartbeat_at")
    running, queued = _lit(TrainingJob.Status.RUNNING), _lit(TrainingJob.Status.QUEUED)
    worker_fields = list(TrainingJob.WORKER_FIELDS)
    header = f"LANGUAGE plpgsql SECURITY DEFINER SET search_path = {s}, pg_temp AS $fn$"
    check_secret = f"""
  IF NOT EXISTS (
    SELECT 1 FROM {secret}
    WHERE {_col(JobSecret, "job")} = p_job
      AND {_col(JobSecret, "secret_sha256")}
          = pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(coalesce(p_secret, ''), 'UTF8')), 'hex')
  ) THEN
    RAISE EXCEPTION 'job %: the worker secret does not match; only the worker the job was sent to may write it', p_job
      USING ERRCODE = 'insufficient_privilege';
  END IF;"""

    def only_keys(arg: str, allowed: list[str], what: str) -> str:
        return f"""
  IF pg_catalog.jsonb_typeof(coalesce({arg}, '{{}}'::jsonb)) <> 'object' THEN
    RAISE EXCEPTION 'job %: % must be a JSON object', p_job, {_lit(what)} USING ERRCODE = 'invalid_parameter_value';
  END IF;
  SELECT pg_catalog.string_agg(k, ', ' ORDER BY k) INTO refused
    FROM pg_catalog.jsonb_object_keys(coalesce({arg}, '{{}}'::jsonb)) AS k WHERE k <> ALL ({_array(allowed)});
  IF refused IS NOT NULL THEN
    RAISE EXCEPTION 'job %: the gpu worker may not write % (%: %)', p_job, refused, {_lit(what)},
      {_lit(", ".join(allowed))} USING ERRCODE = 'insufficient_privilege';
  END IF;"""

    def sets(arg: str) -> str:
        return "".join(
            f",\n      {_col(TrainingJob, n)} = CASE WHEN {arg} ? {_lit(n)} THEN r.{_col(TrainingJob, n)} "
            f"ELSE {_col(TrainingJob, n)} END"
            for n in worker_fields
        )

    claim = f"""
CREATE OR REPLACE FUNCTION {s}.{CLAIM}(p_job bigint, p_secret text, p_worker text) RETURNS boolean
{header}
BEGIN{check_secret}
  UPDATE {job} SET {status} = {running}, {_col(TrainingJob, "started_at")} = pg_catalog.now(),
      {heartbeat} = pg_catalog.now(), {_col(TrainingJob, "worker")} = coalesce(p_worker, '')
    WHERE {pk} = p_job AND {status} = {queued} AND NOT {_col(TrainingJob, "cancel_requested")};
  RETURN FOUND;
END $fn$;"""

    update = f"""
CREATE OR REPLACE FUNCTION {s}.{UPDATE}(p_job bigint, p_secret text, p_fields jsonb) RETURNS boolean
{header}
DECLARE
  r {job};
  refused text;
BEGIN{check_secret}{only_keys("p_fields", worker_fields, "a running job's fields")}
  r := pg_catalog.jsonb_populate_record(NULL::{job}, coalesce(p_fields, '{{}}'::jsonb));
  UPDATE {job} SET {heartbeat} = pg_catalog.now(){sets("p_fields")}
    WHERE {pk} = p_job AND {status} = {running};
  RETURN FOUND;
END $fn$;"""

    finish = f"""
CREATE OR REPLACE FUNCTION {s}.{FINISH}(p_job bigint, p_secret text, p_status text, p_error text, p_fields jsonb)
RETURNS boolean
{header}
DECLARE
  r {job};
  refused text;
BEGIN{check_secret}
  IF p_status IS NULL OR p_status <> ALL ({_array(ENDINGS)}) THEN
    RAISE EXCEPTION 'job %: a gpu worker ends a job as %, not as %', p_job, {_lit(", ".join(ENDINGS))}, p_status
      USING ERRCODE = 'insufficient_privilege';
  END IF;{only_keys("p_fields", worker_fields, "a running job's fields")}
  r := pg_catalog.jsonb_populate_record(NULL::{job}, coalesce(p_fields, '{{}}'::jsonb));
  UPDATE {job} SET {status} = p_status, {_col(TrainingJob, "error")} = coalesce(p_error, ''),
      {_col(TrainingJob, "finished_at")} = pg_catalog.now(), {heartbeat} = pg_catalog.now(){sets("p_fields")}
    WHERE {pk} = p_job AND {status} = {running}
      AND (p_status <> {_lit(TrainingJob.Status.CANCELLED)} OR {_col(TrainingJob, "cancel_requested")});
  RETURN FOUND;
END $fn$;"""

    fields = progress_fields()
    columns = ", ".join(_col(JobProgress, n) for n in fields)
    values = ", ".join(f"r.{_col(JobProgress, n)}" for n in fields)
    progress_sql = f"""
CREATE OR REPLACE FUNCTION {s}.{PROGRESS}(p_job bigint, p_secret text, p_row jsonb) RETURNS boolean
{header}
DECLARE
  r {progress};
  refused text;
BEGIN{check_secret}{only_keys("p_row", fields, "a progress row's fields")}
  IF NOT EXISTS (SELECT 1 FROM {job} WHERE {pk} = p_job AND {status} = {running}) THEN
    RETURN false;
  END IF;
  r := pg_catalog.jsonb_populate_record(NULL::{progress}, p_row);
  INSERT INTO {progress} ({_col(JobProgress, "job")}, {_col(JobProgress, "created_at")}, {columns})
    VALUES (p_job, pg_catalog.now(), {values})
    ON CONFLICT ON CONSTRAINT {_q(_progress_unique_step())} DO NOTHING;
  RETURN FOUND;
END $fn$;"""
    return [claim, update, finish, progress_sql, *_preflight_sql(s, header)]


def _preflight_sql(s: str, header: str) -> list[str]:
    """The preflight worker's three writes: claim a queued preflight, report progress, record the result.

    Checked like a job's: the preflight's secret (``training_preflightsecret``, unreadable to the trainer),
    and only queued → running → succeeded/failed."""
    table = f"{s}.{_q(TrainingPreflight._meta.db_table)}"
    secret = f"{s}.{_q(PreflightSecret._meta.db_table)}"
    status, pk = _col(TrainingPreflight, "status"), _col(TrainingPreflight, "id")
    updated = _col(TrainingPreflight, "updated_at")
    progress_col = _col(TrainingPreflight, "progress")
    running = _lit(TrainingPreflight.Status.RUNNING)
    check_secret = f"""
  IF NOT EXISTS (
    SELECT 1 FROM {secret}
    WHERE {_col(PreflightSecret, "preflight")} = p_id
      AND {_col(PreflightSecret, "secret_sha256")}
          = pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(coalesce(p_secret, ''), 'UTF8')), 'hex')
  ) THEN
    RAISE EXCEPTION 'preflight %: the worker secret does not match; only the worker it was sent to may write it', p_id
      USING ERRCODE = 'insufficient_privilege';
  END IF;"""
    claim = f"""
CREATE OR REPLACE FUNCTION {s}.{PREFLIGHT_CLAIM}(p_id bigint, p_secret text, p_worker text) RETURNS boolean
{header}
BEGIN{check_secret}
  UPDATE {table} SET {status} = {running}, {_col(TrainingPreflight, "started_at")} = pg_catalog.now(),
      {updated} = pg_catalog.now(), {_col(TrainingPreflight, "worker")} = pg_catalog.left(coalesce(p_worker, ''), 200)
    WHERE {pk} = p_id AND {status} = {_lit(TrainingPreflight.Status.QUEUED)};
  RETURN FOUND;
END $fn$;"""
    progress = f"""
CREATE OR REPLACE FUNCTION {s}.{PREFLIGHT_PROGRESS}(p_id bigint, p_secret text, p_progress double precision,
    p_message text) RETURNS boolean
{header}
BEGIN{check_secret}
  UPDATE {table} SET {progress_col} = greatest(0.0, least(1.0, coalesce(p_progress, 0.0))),
      {_col(TrainingPreflight, "message")} = pg_catalog.left(coalesce(p_message, ''), 500), {updated} = pg_catalog.now()
    WHERE {pk} = p_id AND {status} = {running};
  RETURN FOUND;
END $fn$;"""
    finish = f"""
CREATE OR REPLACE FUNCTION {s}.{PREFLIGHT_FINISH}(p_id bigint, p_secret text, p_passed boolean, p_message text,
    p_result jsonb) RETURNS boolean
{header}
BEGIN{check_secret}
  IF pg_catalog.jsonb_typeof(coalesce(p_result, '{{}}'::jsonb)) <> 'object' THEN
    RAISE EXCEPTION 'preflight %: the result must be a JSON object', p_id USING ERRCODE = 'invalid_parameter_value';
  END IF;
  UPDATE {table} SET
      {status} = CASE WHEN p_passed THEN {_lit(TrainingPreflight.Status.SUCCEEDED)}
                 ELSE {_lit(TrainingPreflight.Status.FAILED)} END,
      {progress_col} = CASE WHEN p_passed THEN 1.0 ELSE {progress_col} END,
      {_col(TrainingPreflight, "result")} = coalesce(p_result, '{{}}'::jsonb),
      {_col(TrainingPreflight, "message")} = coalesce(p_message, ''),
      {updated} = pg_catalog.now(), {_col(TrainingPreflight, "finished_at")} = pg_catalog.now()
    WHERE {pk} = p_id AND {status} = {running};
  RETURN FOUND;
END $fn$;"""
    return [claim, progress, finish]
