"""A generation run's gpu worker writes only through these PostgreSQL functions (as a job's does).

The trainer role may SELECT a run row (model, decoding settings, state: no eval text) and nothing
else here: not the outputs (a model may echo the prompt), not the secrets. These ``SECURITY DEFINER``
functions, owned by the owner role, first compare the caller's secret with the sha256 stored when
the run was queued, so a worker writes only the run it was sent (a training job, which never sees
that secret, cannot write or read a run's outputs). They claim a queued run, write the fields in
``GenerationRun.WORKER_FIELDS`` while it runs, append outputs (the database hashes each text itself,
so the hash the snapshot trigger checks cannot be forged), and end it. Each answers yes or no only.
"""

from __future__ import annotations

from config.sqltext import column as _col
from config.sqltext import ident as _q
from config.sqltext import literal as _lit
from config.sqltext import text_array as _array
from evalsets.judging.models import GenerationOutput, GenerationRun, GenerationSecret

CLAIM = "goldset_generation_claim"
UPDATE = "goldset_generation_update"
OUTPUTS = "goldset_generation_outputs_add"
FINISH = "goldset_generation_finish"
SIGNATURES = {
    CLAIM: "bigint, text, text",
    UPDATE: "bigint, text, jsonb",
    OUTPUTS: "bigint, text, jsonb",
    FINISH: "bigint, text, text, text, jsonb",
}
ENDINGS = (GenerationRun.Status.SUCCEEDED, GenerationRun.Status.FAILED, GenerationRun.Status.CANCELLED)
# Only the run's own table must exist for these functions to be created.
REQUIRES = GenerationRun._meta.db_table
OUTPUT_FIELDS = ("position", "record_id", "check_key", "text", "new_tokens", "finish_reason")


def function_sql(schema: str) -> list[str]:
    """CREATE OR REPLACE statements for the four run-write functions in ``schema``."""
    s = _q(schema)
    run = f"{s}.{_q(GenerationRun._meta.db_table)}"
    secret = f"{s}.{_q(GenerationSecret._meta.db_table)}"
    output = f"{s}.{_q(GenerationOutput._meta.db_table)}"
    R = lambda n: _col(GenerationRun, n)  # noqa: E731
    O = lambda n: _col(GenerationOutput, n)  # noqa: E731, E741
    running, queued = _lit(GenerationRun.Status.RUNNING), _lit(GenerationRun.Status.QUEUED)
    header = f"LANGUAGE plpgsql SECURITY DEFINER SET search_path = {s}, pg_temp AS $fn$"
    fields = list(GenerationRun.WORKER_FIELDS)
    check_secret = f"""
  IF NOT EXISTS (
    SELECT 1 FROM {secret}
    WHERE {_col(GenerationSecret, "run")} = p_run
      AND {_col(GenerationSecret, "secret_sha256")}
          = pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(coalesce(p_secret, ''), 'UTF8')), 'hex')
  ) THEN
    RAISE EXCEPTION 'generation run %: the worker secret does not match; only the worker it was sent to may write it',
      p_run USING ERRCODE = 'insufficient_privilege';
  END IF;"""
    only_keys = f"""
  IF pg_catalog.jsonb_typeof(coalesce(p_fields, '{{}}'::jsonb)) <> 'object' THEN
    RAISE EXCEPTION 'generation run %: the fields must be a JSON object', p_run
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  SELECT pg_catalog.string_agg(k, ', ' ORDER BY k) INTO refused
    FROM pg_catalog.jsonb_object_keys(coalesce(p_fields, '{{}}'::jsonb)) AS k WHERE k <> ALL ({_array(fields)});
  IF refused IS NOT NULL THEN
    RAISE EXCEPTION 'generation run %: the gpu worker may not write % (it may write: %)', p_run, refused,
      {_lit(", ".join(fields))} USING ERRCODE = 'insufficient_privilege';
  END IF;
  r := pg_catalog.jsonb_populate_record(NULL::{run}, coalesce(p_fields, '{{}}'::jsonb));"""

    def sets(names) -> str:
        return "".join(f",\n      {R(n)} = CASE WHEN p_fields ? {_lit(n)} THEN r.{R(n)} ELSE {R(n)} END" for n in names)

    claim = f"""
CREATE OR REPLACE FUNCTION {s}.{CLAIM}(p_run bigint, p_secret text, p_worker text) RETURNS boolean
{header}
BEGIN{check_secret}
  UPDATE {run} SET {R("status")} = {running}, {R("started_at")} = pg_catalog.now(), {R("progress")} = 0,
      {R("heartbeat_at")} = pg_catalog.now(), {R("worker")} = pg_catalog.left(coalesce(p_worker, ''), 200),
      {R("message")} = 'Loading the model'
    WHERE {R("id")} = p_run AND {R("status")} = {queued} AND NOT {R("cancel_requested")};
  RETURN FOUND;
END $fn$;"""
    update = f"""
CREATE OR REPLACE FUNCTION {s}.{UPDATE}(p_run bigint, p_secret text, p_fields jsonb) RETURNS boolean
{header}
DECLARE
  r {run};
  refused text;
BEGIN{check_secret}{only_keys}
  UPDATE {run} SET {R("heartbeat_at")} = pg_catalog.now(){sets(fields)}
    WHERE {R("id")} = p_run AND {R("status")} = {running};
  RETURN FOUND;
END $fn$;"""
    not_progress = [f for f in fields if f not in ("progress", "message")]
    out_cols = ", ".join(O(n) for n in OUTPUT_FIELDS)
    out_vals = ", ".join(f"o.{O(n)}" for n in OUTPUT_FIELDS)
    outputs = f"""
CREATE OR REPLACE FUNCTION {s}.{OUTPUTS}(p_run bigint, p_secret text, p_rows jsonb) RETURNS boolean
{header}
DECLARE
  added integer;
  refused text;
BEGIN{check_secret}
  IF pg_catalog.jsonb_typeof(coalesce(p_rows, '[]'::jsonb)) <> 'array' THEN
    RAISE EXCEPTION 'generation run %: outputs must be a JSON array', p_run USING ERRCODE = 'invalid_parameter_value';
  END IF;
  SELECT pg_catalog.string_agg(DISTINCT k, ', ' ORDER BY k) INTO refused
    FROM pg_catalog.jsonb_array_elements(p_rows) AS e, pg_catalog.jsonb_object_keys(e) AS k
    WHERE k <> ALL ({_array(OUTPUT_FIELDS)});
  IF refused IS NOT NULL THEN
    RAISE EXCEPTION 'generation run %: an output has no field %', p_run, refused
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  IF NOT EXISTS (SELECT 1 FROM {run} WHERE {R("id")} = p_run AND {R("status")} = {running}) THEN
    RETURN false;
  END IF;
  INSERT INTO {output} ({O("run")}, {O("created_at")}, {O("model_generated")}, {O("text_sha256")}, {out_cols})
    SELECT p_run, pg_catalog.now(), true,
        pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(o.{O("text")}, 'UTF8')), 'hex'), {out_vals}
    FROM pg_catalog.jsonb_populate_recordset(NULL::{output}, p_rows) AS o;
  GET DIAGNOSTICS added = ROW_COUNT;
  UPDATE {run} SET {R("output_count")} = {R("output_count")} + added, {R("heartbeat_at")} = pg_catalog.now()
    WHERE {R("id")} = p_run;
  RETURN true;
END $fn$;"""
    finish = f"""
CREATE OR REPLACE FUNCTION {s}.{FINISH}(p_run bigint, p_secret text, p_status text, p_message text, p_fields jsonb)
RETURNS boolean
{header}
DECLARE
  r {run};
  refused text;
BEGIN{check_secret}
  IF p_status IS NULL OR p_status <> ALL ({_array(ENDINGS)}) THEN
    RAISE EXCEPTION 'generation run %: a gpu worker ends a run as %, not as %', p_run, {_lit(", ".join(ENDINGS))},
      p_status USING ERRCODE = 'insufficient_privilege';
  END IF;{only_keys}
  UPDATE {run} SET {R("status")} = p_status, {R("message")} = coalesce(p_message, ''),
      {R("finished_at")} = pg_catalog.now(), {R("heartbeat_at")} = pg_catalog.now(){sets(not_progress)},
      {R("progress")} = CASE WHEN p_status = {_lit(GenerationRun.Status.SUCCEEDED)} THEN 1.0 ELSE {R("progress")} END
    WHERE {R("id")} = p_run AND {R("status")} = {running}
      AND (p_status <> {_lit(GenerationRun.Status.CANCELLED)} OR {R("cancel_requested")});
  RETURN FOUND;
END $fn$;"""
    return [claim, update, outputs, finish]
