"""Short coverage-guided fuzz runs (tests/fuzz/, atheris), bounded by count:
every regression input replayed, then 3,000 executions per target (its
corpus first, then new inputs). `make fuzz` runs them for long. The count,
not a time limit, ends a run: a loaded machine takes longer and still runs
every input (about 3 to 11 s per target on an idle 2-core host)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parent / "fuzz"
sys.path.insert(0, str(FUZZ.parent.parent))
from tests.fuzz.run import TARGETS  # noqa: E402


@pytest.mark.timeout(660)
@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_target_short_run(target: str) -> None:
    r = subprocess.run(  # --seconds 0: libFuzzer's -max_total_time=0, no time limit; timeout= only stops a hang
        [sys.executable, str(FUZZ / "run.py"), "--runs", "3000", "--seconds", "0", target],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr[-4000:]
    executed = re.search(r"number_of_executed_units: (\d+)", r.stdout)
    assert executed and int(executed.group(1)) >= 3000, r.stdout  # the corpus, then new inputs: all 3,000 ran


def test_every_target_has_a_corpus_and_its_regressions_are_inputs() -> None:
    for target in TARGETS:
        assert any((FUZZ / "corpus" / target).iterdir()), target
    regressions = [p for p in (FUZZ / "regressions").rglob("*") if p.is_file()]
    assert len(regressions) >= 3 and all(p.parent.name in TARGETS for p in regressions)


def test_tls_records_runs_on_the_core_built_with_asan(tmp_path: Path) -> None:
    """The tls_records harness serves with the sanitized core (the ring and
    tls.c), not the installed one: a use after free in tls.c is an ASan
    report there, not a silent corruption. Its corpus inputs are given as
    files (run once each): the repository's corpus folder is not grown."""
    from tests.fuzz.run import env_for

    env = env_for("tls_records")
    inputs = sorted((FUZZ / "corpus" / "tls_records").iterdir())[:10]
    r = subprocess.run(
        [sys.executable, str(FUZZ / "tls_records.py"), f"-artifact_prefix={tmp_path}/", *map(str, inputs)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    assert "tls_records: the native core under ASan: " in r.stderr and "_core_asan" in r.stderr, r.stderr[-2000:]
