"""The result cache of `rl summary` and `rl compare` (issue 17): a cached answer is exactly the fresh one, a corrupt
or foreign entry is never trusted, a version change is a miss, and a cached summary needs no torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import rlcli
from rlcli.core import resultcache
from rlcli.core.resultcache import ResultCache
from rlcli.tasks import cached

TESTS = Path(__file__).parent
MODEL = "micronet_kws_s"  # a registered model that counts in a fraction of a second
OPTIONS = {"input_size": None, "inputs": None, "batch_size": 1, "counter": "rlcli"}


@pytest.fixture(autouse=True)
def pinned_fingerprint(monkeypatch):
    """rl's files as they were when the test began: an edit made meanwhile in this checkout changes no key."""
    monkeypatch.setattr(resultcache, "package_fingerprint", lambda: "pinned")


@pytest.fixture
def counted(monkeypatch):
    """The names `tasks.summary.summarize` counted (a cache hit counts nothing)."""
    import rlcli.tasks.summary as task

    calls: list[str] = []
    real = task.summarize

    def counting(model, **options):
        calls.append(model)
        return real(model, **options)

    monkeypatch.setattr(task, "summarize", counting)
    return calls


def entry_path(model: str = MODEL, **options) -> Path:
    return ResultCache().path(cached.SUMMARY_KIND, cached.summary_key(model, {**OPTIONS, **options}))


# --- rl summary: the CLI ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [["--json"], ["--json", "--depth", "1"], ["--csv", "--depth", "0"], ["--csv"]])
def test_cached_output_is_byte_identical_to_uncached(rl, counted, result_cache_in_tmp, args):
    fresh = rl("summary", MODEL, *args, "--no-cache")
    assert fresh.code == 0, fresh.stderr
    assert not any(result_cache_in_tmp.rglob("*.json"))  # --no-cache writes nothing
    first = rl("summary", MODEL, *args)  # counts, at every depth, and stores
    assert len(list(result_cache_in_tmp.rglob("*.json"))) == 1
    again = rl("summary", MODEL, *args)
    assert counted == [MODEL, MODEL]  # the third call was answered from the cache
    assert first.stdout == fresh.stdout and again.stdout == fresh.stdout


def test_one_entry_answers_every_depth(rl, counted):
    rl("summary", MODEL, "--json", "--depth", "0")
    for depth in ("1", "2", "5"):
        cached_json = json.loads(rl("summary", MODEL, "--json", "--depth", depth).stdout)
        fresh_json = json.loads(rl("summary", MODEL, "--json", "--depth", depth, "--no-cache").stdout)
        assert cached_json == fresh_json
    assert counted == [MODEL, MODEL, MODEL, MODEL]  # the first, and the three --no-cache runs


def test_every_option_but_depth_keys_the_entry(rl, counted, result_cache_in_tmp):
    rl("summary", MODEL, "--json")
    rl("summary", MODEL, "--json", "--batch-size", "2")
    rl("summary", MODEL, "--json", "--batch-size", "2", "--depth", "1")
    assert counted == [MODEL, MODEL]
    assert len(list(result_cache_in_tmp.rglob("*.json"))) == 2


def test_inputs_file_is_keyed_by_its_content(tmp_path):
    inputs = tmp_path / "inputs.json"
    inputs.write_text('{"x": [1, 49, 10]}')
    before = cached.summary_key(MODEL, {**OPTIONS, "inputs": str(inputs)})
    inputs.write_text('{"x": [1, 98, 10]}')
    assert cached.summary_key(MODEL, {**OPTIONS, "inputs": str(inputs)}) != before


def test_user_models_are_never_cached(rl, result_cache_in_tmp):
    reference = f"{TESTS / 'tiny_models.py'}:make_tiny"
    result = rl("summary", reference, "--input-size", "3x8x8", "--json")
    assert result.code == 0, result.stderr
    assert cached.summary_key(reference, OPTIONS) is None
    assert not any(result_cache_in_tmp.rglob("*.json"))


# --- rl summary: the task ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [{}, {"counter": "fvcore"}, {"counter": "all"}, {"train": True, "by_op": True}, {"op_row": "blocks.1"}],
    ids=["rlcli", "fvcore", "all", "train-by-op", "row"],
)
def test_depth_of_the_full_result_is_summarize_at_that_depth(options):
    """What the cache stores (every depth) cut at a depth is what summarize returns at that depth."""
    from rlcli.tasks.summary import summarize

    full = summarize(MODEL, depth=None, **options)
    for depth in (0, 1, 2):
        expected = summarize(MODEL, depth=depth, **options).to_dict()
        assert cached.at_depth(full, depth).to_dict() == expected


def test_cached_summary_equals_uncached_object():
    from rlcli.cli.summary import footer
    from rlcli.tasks.summary import summarize

    model = "mobilenet_v1_025"  # with a paper card: PaperComparison, Paper (cite() in the footer), FigureCheck
    stored = cached.summarize_cached(model, depth=None, **OPTIONS)
    reread = cached.summarize_cached(model, depth=None, **OPTIONS)
    assert reread is not stored and reread == stored
    assert reread.paper is not None and type(reread.paper) is type(stored.paper)
    assert footer(reread) == footer(stored)
    assert json.dumps(reread.to_dict()) == json.dumps(summarize(model, depth=None).to_dict())


def test_a_detector_summary_round_trips():
    """Card figures (Measured) come back as themselves; core.meta's RealStep, whose module imports torch, as a
    record with its fields: the footer and the JSON are the same."""
    from rlcli.cli.summary import footer
    from rlcli.tasks.summary import summarize

    summary = summarize("maskrcnn_resnet50_fpn", depth=0)
    assert summary.measured and summary.value_steps.ran_for_real
    reread = cached.decode_summary(json.loads(json.dumps(resultcache.encode(summary))))
    assert type(reread.measured[0]) is type(summary.measured[0])
    assert footer(reread) == footer(summary)
    assert json.dumps(reread.to_dict()) == json.dumps(summary.to_dict())


def test_tagged_json_keeps_tuples_dicts_and_order():
    from dataclasses import asdict, dataclass

    @dataclass(frozen=True)
    class Step:
        shape: tuple[int, ...]
        counts: dict
        name: str = "x"

    value = [Step((1, 2), {"b": 1, "a": (2.5, None)}), {3: "int key"}, (True, float("inf"))]
    back = resultcache.decode(json.loads(json.dumps(resultcache.encode(value))))
    assert back[1:] == value[1:] and asdict(back[0]) == asdict(value[0])
    assert type(back[0]).__name__ == "Step" and type(back[0]) is not Step  # not among the classes rebuilt
    assert resultcache.decode(json.loads(json.dumps(resultcache.encode(value))), [Step])[0] == value[0]
    with pytest.raises(resultcache.NotCacheable):
        resultcache.encode({"path": Path("x")})


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: text[: len(text) // 2],  # truncated: not JSON
        lambda text: "",
        lambda text: '{"hello": "world"}',  # another program's JSON
        lambda text: text.replace('"schema":1', '"schema":99'),
        lambda text: text.replace(f'"model":"{MODEL}"', '"model":"resnet18"'),  # a key that is not this one
        lambda text: text.replace('"macs":', '"macs_renamed":', 1),  # fields of another version of the code
        lambda text: text.replace("rlcli.tasks.summary:ModelSummary", "rlcli.tasks.summary:LayerRow", 1),
    ],
    ids=["truncated", "empty", "foreign", "schema", "other-key", "other-fields", "other-class"],
)
def test_a_corrupt_or_foreign_entry_is_ignored_and_rewritten(counted, damage):
    fresh = cached.summarize_cached(MODEL, **OPTIONS)
    path = entry_path()
    good = path.read_text()
    path.write_text(damage(good))
    assert cached.summarize_cached(MODEL, **OPTIONS) == fresh
    assert counted == [MODEL, MODEL]  # counted again, not read
    assert json.loads(path.read_text())["key"] == json.loads(good)["key"]  # and the entry is whole again
    assert cached.summarize_cached(MODEL, **OPTIONS) == fresh
    assert counted == [MODEL, MODEL]


def test_an_entry_for_another_model_under_this_name_is_not_trusted(counted):
    other = cached.summarize_cached("micronet_kws_m", **OPTIONS)
    entry_path().parent.mkdir(parents=True, exist_ok=True)
    entry_path().write_bytes(entry_path("micronet_kws_m").read_bytes())  # same schema, same kind, another key
    assert cached.summarize_cached(MODEL, **OPTIONS).model == MODEL != other.model
    assert counted == ["micronet_kws_m", MODEL]


@pytest.mark.parametrize("package", ["rlcli", "torch", "torchvision"])
def test_a_version_change_is_a_miss(monkeypatch, counted, package):
    import importlib.metadata

    cached.summarize_cached(MODEL, **OPTIONS)
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "99.0" if name == package else real(name))
    cached.summarize_cached(MODEL, **OPTIONS)
    assert counted == [MODEL, MODEL]
    cached.summarize_cached(MODEL, **OPTIONS)  # the new version's entry now answers
    monkeypatch.setattr(importlib.metadata, "version", real)
    cached.summarize_cached(MODEL, **OPTIONS)  # and the old one's is still there
    assert counted == [MODEL, MODEL]


def test_an_edited_rl_file_is_a_miss(monkeypatch, counted):
    cached.summarize_cached(MODEL, **OPTIONS)
    monkeypatch.setattr(resultcache, "package_fingerprint", lambda: "edited")
    cached.summarize_cached(MODEL, **OPTIONS)
    assert counted == [MODEL, MODEL]


def test_versions_are_read_without_importing_the_libraries():
    code = "import sys; from rlcli.core.resultcache import code_key; code_key(); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=60)
    assert done.stdout.strip() == "False", done.stderr


def test_an_unwritable_cache_is_no_error(monkeypatch, tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("")
    monkeypatch.setattr(resultcache, "cache_folder", lambda: blocked / "rlcli")  # under a file: cannot be made
    assert cached.summarize_cached(MODEL, **OPTIONS).model == MODEL


# --- no torch on a hit ------------------------------------------------------------------------------------------

# The package fingerprint is pinned so that files edited meanwhile (a checkout being worked on) change no key
# between the runs of one test; test_an_edited_rl_file_is_a_miss covers it.
RUN = """
import atexit, sys
atexit.register(lambda: sys.stderr.write("TORCH-IMPORTED" if "torch" in sys.modules else "TORCH-FREE"))
sys.argv = {argv!r}
import rlcli.core.resultcache
rlcli.core.resultcache.package_fingerprint = lambda: "pinned"
from rlcli.cli import main
main()
"""


def _env(**extra: str) -> dict[str, str]:
    """This test's environment for a child process running the same rl (its package on PYTHONPATH first)."""
    package_root = str(Path(rlcli.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")]), **extra}


def _rl(argv: list[str], cache_home: Path) -> subprocess.CompletedProcess:
    code = RUN.format(argv=["rl", *argv])
    env = _env(XDG_CACHE_HOME=str(cache_home), COLUMNS="200")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_a_cached_summary_does_not_import_torch(tmp_path):
    first = _rl(["summary", "swin_t", "--json"], tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stderr.endswith("TORCH-IMPORTED")
    assert list((tmp_path / "rlcli" / "summary").glob("*.json"))
    hits = {}
    for argv in (["summary", "swin_t"], ["summary", "swin_t", "-d", "1", "--json"], ["summary", "swin_t", "--csv"]):
        hits[argv[-1]] = _rl(argv, tmp_path)
        assert hits[argv[-1]].returncode == 0, hits[argv[-1]].stderr
        assert hits[argv[-1]].stderr.endswith("TORCH-FREE"), argv
    fresh = _rl(["summary", "swin_t", "--no-cache"], tmp_path)  # --json and --csv: compared in-process above
    assert hits["swin_t"].stdout == fresh.stdout


# --- rl cache ---------------------------------------------------------------------------------------------------


def test_cache_info_and_clear(rl, result_cache_in_tmp):
    empty = json.loads(rl("cache", "info", "--json").stdout)
    assert empty["entries"] == 0 and empty["location"] == str(result_cache_in_tmp)
    rl("summary", MODEL, "--json")
    rl("summary", "micronet_kws_m", "--json")
    (result_cache_in_tmp / "keep-me.txt").write_text("not the cache's")  # rl's other files are not entries
    info = rl("cache", "info", "--json")
    assert info.code == 0, info.stderr
    listed = json.loads(info.stdout)
    on_disk = list((result_cache_in_tmp / "summary").glob("*.json"))
    assert listed["entries"] == 2 == len(on_disk) and listed["by_kind"] == {"summary": 2}
    assert listed["bytes"] == sum(p.stat().st_size for p in on_disk)
    text = rl("cache", "info").stdout
    assert f"Location: {result_cache_in_tmp}\n" in text and "Entries: 2 (summary 2)\n" in text
    cleared = rl("cache", "clear")
    assert cleared.code == 0 and "removed 2 entries" in cleared.stderr and cleared.stdout == ""
    assert json.loads(rl("cache", "info", "--json").stdout)["entries"] == 0
    assert (result_cache_in_tmp / "keep-me.txt").exists()


# --- rl compare -------------------------------------------------------------------------------------------------

SEARCH = {"budget": "150M", "families": ["mobilenet_v2"], "groups": 32, "input_size": None}


@pytest.mark.parametrize("options", [{}, {"budget": "300M", "dtype": "bfloat16"}], ids=["float32", "bfloat16"])
def test_cached_family_search_is_compares_own(monkeypatch, options):
    """The stored search is exactly tasks.compare.compare's, and a repeated budget searches nothing."""
    from rlcli.tasks import compare as task

    search = {**SEARCH, **options}
    fresh = task.compare(None, **search)
    assert cached.compare_cached(**search).to_dict() == fresh.to_dict()

    def no_search(*args, **kwargs):
        raise AssertionError("searched again")

    monkeypatch.setattr(task, "scale_family", no_search)
    assert cached.compare_cached(**search).to_dict() == fresh.to_dict()
    other_dtype = {**search, "dtype": "float16"}
    with pytest.raises(AssertionError, match="searched again"):
        cached.compare_cached(**other_dtype)  # the dtype keys the search


def test_cached_family_search_is_timed_afresh():
    from rlcli.tasks.compare import Timing

    cached.compare_cached(**SEARCH)
    timing = Timing(device="cpu", threads=1, warmup=1, repeats=3, batch_size=1)
    timed = cached.compare_cached(**SEARCH, timing=timing)
    assert timed.timing == timing and all(e.latency_ms and e.throughput for e in timed.entries)
    assert cached.compare_cached(**SEARCH).timing is None  # timings are never stored


def test_compare_cli_reads_the_cache_and_no_cache_bypasses(rl, monkeypatch):
    from rlcli.tasks import compare as task

    args = ["compare", "--macs", "300M", "--families", "mobilenet_v2", "--no-time", "--json"]  # stock: one count
    first = rl(*args)
    assert first.code == 0, first.stderr
    searched = []
    real = task.scale_family
    monkeypatch.setattr(task, "scale_family", lambda *a, **k: searched.append(a) or real(*a, **k))
    assert rl(*args).stdout == first.stdout and searched == []
    assert rl(*args, "--no-cache").stdout == first.stdout and len(searched) == 1
