"""pytest plugin of the GPU check's dry run (tools/gpu_check.py --dry-run loads it with `-p gpu_check_collect`):
counts the tests each selection of GPU_CHECK_SELECTIONS (a JSON list of [test file names, -k expression]) collects,
with pytest's own -k semantics, and writes the counts (or why an expression is malformed) to GPU_CHECK_COUNTS."""
import json
import os
from pathlib import Path


def pytest_collection_modifyitems(session, config, items):
    spec = os.environ.get("GPU_CHECK_SELECTIONS")
    if not spec:
        return
    from _pytest.mark import KeywordMatcher
    from _pytest.mark.expression import Expression

    counts = []
    for files, kexpr in json.loads(spec):
        try:
            expr = Expression.compile(kexpr)
        except Exception as e:  # a malformed -k expression
            counts.append(f"bad -k expression {kexpr!r}: {e}")
            continue
        counts.append(sum(1 for it in items if it.path.name in files and expr.evaluate(KeywordMatcher.from_item(it))))
    Path(os.environ["GPU_CHECK_COUNTS"]).write_text(json.dumps(counts))
