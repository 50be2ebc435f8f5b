"""Exports: byte-identical re-exports, manifests that match their files, layouts that load as-is."""

import hashlib
import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from evalsets.export import FORMATS
from tests.evalsets.conftest import gold_payload, preference_payload

pytestmark = pytest.mark.django_db


@pytest.fixture
def version(make_item, freeze, rubric_version):
    make_item(
        "gold",
        prompt="Wie setze ich mein Passwort zurück? «Bitte» 🙂",
        payload=gold_payload("Über den Link „Passwort vergessen“."),
    )
    make_item(
        "gold",
        prompt="Chat prompt",
        messages=[{"content": "You are kind.", "role": "system"}, {"content": "Hi there", "role": "user"}],
        payload=gold_payload("Hello! How can I help?"),
    )
    make_item(
        "preference",
        responses=[{"text": "Go away.", "model": "a"}, {"text": "Happy to help!", "model": "b"}],
        payload=preference_payload(chosen=1, rejected=0),
    )
    make_item("rubric", payload={"response_index": 0, "scores": {"helpful": 4}}, rubric_version=rubric_version)
    return freeze().version


def export(version, tmp_path, *formats):
    args = [str(version.pk), "--out", str(tmp_path)]
    args += [a for f in formats for a in ("--format", f)] if formats else ["--all-formats"]
    call_command("export_evalset", *args, stdout=StringIO())
    return tmp_path


def lines(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_re_exporting_a_version_gives_byte_identical_files(version, tmp_path):
    first = export(version, tmp_path / "a")
    second = export(version, tmp_path / "b")
    names = sorted(p.name for p in first.iterdir())
    assert len(names) == 2 * len(FORMATS)
    assert names == sorted(p.name for p in second.iterdir())
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_each_manifest_names_the_sha256_and_counts_of_its_file(version, tmp_path):
    out = export(version, tmp_path)
    for fmt in FORMATS:
        data = out / f"support-eval-v1.{fmt}.jsonl"
        manifest = json.loads((out / f"support-eval-v1.{fmt}.manifest.json").read_text())
        assert manifest["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
        assert manifest["bytes"] == data.stat().st_size
        assert manifest["records"] == len(data.read_bytes().splitlines())
        assert manifest["records"] + manifest["skipped"] == version.record_count
        assert (manifest["version"], manifest["version_sha256"], manifest["format"]) == (1, version.sha256, fmt)
        assert manifest["created"] == version.frozen_at.isoformat()
        assert manifest["rubric_versions"] == version.rubric_versions
        assert list(manifest) == [
            "evalset", "project", "version", "version_sha256", "format", "file", "sha256", "bytes",
            "records", "skipped", "counts", "rubric_versions", "created", "frozen_by",
        ]  # fmt: skip


def test_the_canonical_file_hashes_to_the_version_sha256_and_keeps_text_as_given(version, tmp_path):
    out = export(version, tmp_path, "goldset")
    body = (out / "support-eval-v1.goldset.jsonl").read_bytes()
    assert hashlib.sha256(body).hexdigest() == version.sha256
    assert "Über den Link „Passwort vergessen“.".encode() in body  # UTF-8, not \\u escapes
    first = json.loads(body.splitlines()[0])
    assert list(first) == sorted(first)


def test_trl_and_openai_layouts_have_the_documented_shapes(version, tmp_path):
    out = export(version, tmp_path)
    pc = lines(out / "support-eval-v1.prompt-completion.jsonl")
    assert pc[0] == {
        "prompt": "Wie setze ich mein Passwort zurück? «Bitte» 🙂",
        "completion": "Über den Link „Passwort vergessen“.",
    }
    assert len(pc) == 3  # two gold answers and the chosen response; the rubric record has no target
    messages = lines(out / "support-eval-v1.messages.jsonl")
    assert messages[1]["messages"] == [
        {"role": "system", "content": "You are kind."},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! How can I help?"},
    ]
    assert (out / "support-eval-v1.openai-sft.jsonl").read_bytes() == (
        out / "support-eval-v1.messages.jsonl"
    ).read_bytes()
    assert lines(out / "support-eval-v1.preference.jsonl") == [
        {"prompt": version.records.get(kind="preference").prompt, "chosen": "Happy to help!", "rejected": "Go away."}
    ]
    (dpo,) = lines(out / "support-eval-v1.openai-dpo.jsonl")
    assert list(dpo) == ["input", "preferred_output", "non_preferred_output"]
    assert dpo["preferred_output"] == [{"role": "assistant", "content": "Happy to help!"}]
    assert dpo["non_preferred_output"] == [{"role": "assistant", "content": "Go away."}]
    assert dpo["input"]["messages"][0]["role"] == "user"


@pytest.mark.training
def test_the_trl_layouts_load_directly_with_datasets(version, tmp_path):
    import datasets

    out = export(version, tmp_path)
    expected = {
        "prompt-completion": ["prompt", "completion"],
        "messages": ["messages"],
        "preference": ["prompt", "chosen", "rejected"],
        "openai-dpo": ["input", "preferred_output", "non_preferred_output"],
    }
    for fmt, columns in expected.items():
        ds = datasets.load_dataset(
            "json", data_files=str(out / f"support-eval-v1.{fmt}.jsonl"), split="train", cache_dir=str(tmp_path / "c")
        )
        assert ds.column_names == columns, fmt
    assert ds[0]["preferred_output"][0]["content"] == "Happy to help!"


def test_the_browser_download_streams_the_same_bytes_as_the_command(client, admin_user, version, tmp_path):
    out = export(version, tmp_path, "preference", "goldset")
    client.force_login(admin_user)
    for fmt in ("preference", "goldset"):
        response = client.get(reverse("evalsets:version-export", args=[version.pk, fmt]))
        assert response.streaming
        assert f'filename="support-eval-v1.{fmt}.jsonl"' in response["Content-Disposition"]
        assert b"".join(response.streaming_content) == (out / f"support-eval-v1.{fmt}.jsonl").read_bytes()
        manifest = client.get(reverse("evalsets:version-export-manifest", args=[version.pk, fmt]))
        assert manifest.content == (out / f"support-eval-v1.{fmt}.manifest.json").read_bytes()


def test_an_unknown_format_or_version_says_what_to_use(client, admin_user, version, tmp_path):
    client.force_login(admin_user)
    assert client.get(reverse("evalsets:version-export", args=[version.pk, "csv"])).status_code == 404
    with pytest.raises(CommandError, match="No eval set version 'support-eval-v9'"):
        call_command("export_evalset", "support-eval-v9", "--out", str(tmp_path))
    call_command("export_evalset", "support-eval-v1", "--out", str(tmp_path), stdout=StringIO())
    assert (tmp_path / "support-eval-v1.goldset.jsonl").exists()


def test_downloads_follow_the_projects_visibility(client, alice, mallory, version, project):
    url = reverse("evalsets:version-export", args=[version.pk, "goldset"])
    client.force_login(mallory)
    assert client.get(url).status_code == 404
    client.force_login(alice)
    assert client.get(url).status_code == 403
    project.reviewers_see_evalsets = True
    project.save()
    assert client.get(url).status_code == 200


# --- only the layouts a version can fill ----------------------------------------------------------


@pytest.fixture
def gold_only(make_item, freeze):
    make_item("gold", payload=gold_payload("Open Settings, then Billing."))
    make_item("gold", payload=gold_payload("Yes, within 30 days."))
    return freeze().version


def test_a_gold_only_version_offers_no_preference_layouts_and_refuses_them_with_the_reason(
    client, admin_user, gold_only
):
    client.force_login(admin_user)
    page = client.get(reverse("evalsets:version-detail", args=[gold_only.pk])).content.decode()
    fillable = ["goldset", "prompt-completion", "messages", "openai-sft"]
    for fmt in FORMATS:
        link = reverse("evalsets:version-export", args=[gold_only.pk, fmt])
        assert (link in page) == (fmt in fillable), fmt
    reason = (
        "support-eval-v1 has no preference pairs (a chosen and a rejected response), so it has nothing to export "
        "as &#x27;{fmt}&#x27;. Layouts it can fill: goldset, prompt-completion, messages, openai-sft."
    )
    for fmt in ("preference", "openai-dpo"):
        for name in ("evalsets:version-export", "evalsets:version-export-manifest"):
            response = client.get(reverse(name, args=[gold_only.pk, fmt]))
            assert response.status_code == 404
            assert reason.format(fmt=fmt) in response.content.decode()
    for fmt in fillable:
        body = b"".join(client.get(reverse("evalsets:version-export", args=[gold_only.pk, fmt])).streaming_content)
        assert len(body.splitlines()) == 2, fmt  # every offered layout has a line per record


def test_a_rubric_only_version_offers_only_the_canonical_layout(client, admin_user, make_item, freeze, rubric_version):
    make_item("rubric", payload={"response_index": 0, "scores": {"helpful": 4}}, rubric_version=rubric_version)
    version = freeze().version
    client.force_login(admin_user)
    response = client.get(reverse("evalsets:version-export", args=[version.pk, "messages"]))
    assert response.status_code == 404
    assert "has no gold answers or preference pairs" in response.content.decode()
    assert client.get(reverse("evalsets:version-export", args=[version.pk, "goldset"])).status_code == 200


def test_the_command_says_the_same_and_all_formats_writes_only_what_the_version_fills(gold_only, tmp_path):
    with pytest.raises(CommandError) as caught:
        call_command("export_evalset", "support-eval-v1", "--format", "openai-dpo", "--out", str(tmp_path / "a"))
    assert str(caught.value) == (
        "support-eval-v1 has no preference pairs (a chosen and a rejected response), so it has nothing to export "
        "as 'openai-dpo'. Layouts it can fill: goldset, prompt-completion, messages, openai-sft."
    )
    assert not (tmp_path / "a").exists()

    out = StringIO()
    call_command("export_evalset", "support-eval-v1", "--all-formats", "--out", str(tmp_path / "b"), stdout=out)
    written = sorted(p.name for p in (tmp_path / "b").glob("*.jsonl"))
    assert written == [
        f"support-eval-v1.{fmt}.jsonl" for fmt in sorted(["goldset", "prompt-completion", "messages", "openai-sft"])
    ]
    assert "preference: left out. support-eval-v1 has no preference pairs" in out.getvalue()
    assert "openai-dpo: left out." in out.getvalue()


def test_the_kinds_each_layout_is_filled_by_match_what_it_renders():
    """FILLED_BY decides what is offered; it must agree with the renderers for every kind of record."""
    from evalsets.export import FILLED_BY

    base = {field: None for field in export_fields()}
    records = {
        "gold": {**base, "kind": "gold", "prompt": "q", "reference": "a", "response": "", "chosen": "", "rejected": ""},
        "preference": {**base, "kind": "preference", "prompt": "q", "reference": "", "chosen": "c", "rejected": "r"},
        "rubric": {
            **base,
            "kind": "rubric",
            "prompt": "q",
            "reference": "",
            "response": "x",
            "chosen": "",
            "rejected": "",
            "rubric_scores": {"helpful": 4},
        },
    }
    for fmt, (_, render) in FORMATS.items():
        rendered = {kind for kind, record in records.items() if render(record) is not None}
        assert rendered == FILLED_BY[fmt], fmt


def export_fields():
    from evalsets.export import CANONICAL_FIELDS

    return CANONICAL_FIELDS


@pytest.mark.training
def test_every_layout_offered_for_a_gold_only_version_loads_with_datasets(gold_only, tmp_path):
    import datasets

    from evalsets.export import layouts_for

    out = tmp_path / "out"
    call_command("export_evalset", "support-eval-v1", "--all-formats", "--out", str(out), stdout=StringIO())
    for fmt in layouts_for(gold_only.counts):
        ds = datasets.load_dataset(
            "json", data_files=str(out / f"support-eval-v1.{fmt}.jsonl"), split="train", cache_dir=str(tmp_path / "c")
        )
        assert ds.num_rows == 2, fmt
