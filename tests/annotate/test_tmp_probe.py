import io, json
import pytest
from annotate.models import ImportBatch, Item
from annotate.services import imports
pytestmark = pytest.mark.django_db

@pytest.fixture(autouse=True)
def media_in_tmp(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"

def run(project, data):
    b = imports.import_batch_create(project=project, uploaded_by=None, filename="r.jsonl", upload=io.BytesIO(data))
    return imports.import_batch_run(batch_id=b.id)

def test_probe(project):
    rows = [{"prompt": f"q{i}", "response": "a"} for i in range(5)] + [{"prompt": "q1", "response": "a"}]
    data = b"".join(json.dumps(r).encode()+b"\n" for r in rows)
    a = run(project, data)
    print(a.status, a.message, a.errors)
    b = run(project, data)
    print(b.status, b.message, b.errors)
    c = run(project, b'{"prompt": "x\tb", "response": "a"}\n')
    print(c.errors)
