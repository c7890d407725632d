"""benchmarks/gpu_check.py: the ``--device cpu --tiny`` dry run of the GPU check, in a subprocess that cannot
import what the GPU machine lacks, and the section runner's bookkeeping.

What is asserted: every section measures (positive rates, ratios), the engine and the per-prompt reference
agree on the same model, batching really batches, a failing section is recorded while the others still run,
the budget skips, and every module the run imports exists on the GPU image or travels as a carried wheel.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import re
import subprocess
import sys
import sysconfig
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root holds `benchmarks`

from benchmarks import gpu_check as G

REPO = G.REPO
SCRIPT = REPO / "benchmarks" / "gpu_check.py"

BLOCKED = ("ray", "vllm", "faiss", "fastapi", "starlette", "uvicorn")
# The subprocess: the blocked names are None in sys.modules, which is how Python spells "absent": `import ray`
# raises ModuleNotFoundError and importlib.util.find_spec("ray") is None (optional-dependency probes say no).
# At exit it writes each top-level module's file, so the test can tell which distribution it came from.
WRAPPER = """
import atexit, json, runpy, sys
for name in {blocked!r}:
    sys.modules[name] = None
def _origins():
    tops = {{m.split(".")[0] for m in list(sys.modules)}}
    files = {{t: getattr(sys.modules.get(t), "__file__", None) for t in tops}}
    with open({origins!r}, "w") as f:
        json.dump(files, f)
atexit.register(_origins)
sys.argv = [{script!r}, *sys.argv[1:]]
runpy.run_path({script!r}, run_name="__main__")
"""

# the Python distributions of the GPU machine's image (its package list as read on 2026-11-17)
GPU_DISTRIBUTIONS = set(
    """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
    charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
    cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax
    fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
    hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2
    joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
    markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch
    mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti
    nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver
    nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13
    nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
    orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache
    protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest
    pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex
    requests rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece
    sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
    tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio
    torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions
    typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp""".split()
)
# huggingface_hub 2.x here speaks HTTP through httpx2 / httpcore2 (+ truststore); the GPU image's huggingface-hub
# (1.33) imports httpx / httpcore there instead, both in its list
LOCAL_HTTP_STACK = {"httpx2", "httpcore2", "truststore"}


def norm(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def carried_distributions() -> set[str]:
    """The wheels scripts/gpu_check_wheels.sh downloads into .gpu_wheels (its PACKAGES line)."""
    text = (REPO / "scripts" / "gpu_check_wheels.sh").read_text()
    return {norm(d) for d in re.search(r'^PACKAGES="([^"]+)"', text, re.M).group(1).split()}


def env() -> dict[str, str]:
    """One torch thread: on a shared 2-core machine OpenMP barriers across descheduled threads cost 5x."""
    out = {**os.environ, "OMP_NUM_THREADS": "1", "RAGREC_TORCH_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return out | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def tokenizer_dir() -> str:
    from ragrec.llm.registry import model_path

    return model_path("tiny-random-llama")  # a 2-layer Llama folder holding the SmolLM2 tokenizer


def dry_run(out: Path, tokenizer: str, *extra: str) -> tuple[subprocess.CompletedProcess, dict | None, dict]:
    """``(process, results JSON or None, module origins)`` of a ``--device cpu --tiny`` run into ``out``."""
    origins = out / "origins.json"
    code = WRAPPER.format(blocked=BLOCKED, origins=str(origins), script=str(SCRIPT))
    args = ["--device", "cpu", "--tiny", "--out", str(out / "results"), "--tokenizer", tokenizer, *extra]
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=REPO, env=env(), capture_output=True, text=True, timeout=600
    )
    path = out / "results" / G.JSON_NAME
    doc = json.loads(path.read_text()) if path.exists() else None
    return proc, doc, json.loads(origins.read_text()) if origins.exists() else {}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tokenizer_dir):
    out = tmp_path_factory.mktemp("gpu_check")
    proc, doc, origins = dry_run(out, tokenizer_dir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return doc, origins, proc, out / "results"


def finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_dry_run_measures_every_section(full_run):
    doc, _, proc, results = full_run
    assert list(doc["sections"]) == list(G.SECTIONS)
    for name, section in doc["sections"].items():
        assert section["status"] == "ok", (name, section.get("error"))
        assert section["rows"], name
        for row in section["rows"]:
            assert finite_positive(row["rate"]), (name, row)
            if name not in ("peak", "lora"):  # comparisons: ragrec vs a reference measured in the same run
                assert finite_positive(row["reference_rate"]) and finite_positive(row["ratio"]), (name, row)
                assert row["ratio"] == pytest.approx(row["rate"] / row["reference_rate"], rel=1e-6)
    assert doc["meta"]["tiny"] is True and doc["meta"]["device"] == "cpu"
    assert set(doc["goals"]) == {"scoring_large_shape", "serving_batching"}
    assert all(finite_positive(g["ratio"]) and isinstance(g["met"], bool) for g in doc["goals"].values())
    md = (results / G.MD_NAME).read_text()
    assert all(f"## {name}: ok" in md for name in G.SECTIONS) and "DRY RUN" in md
    assert re.search(r"\[\d\d:\d\d:\d\d \+\s*[\d.]+s\] scoring: ok", proc.stdout)  # timestamped progress


def test_engine_agrees_with_the_per_prompt_reference(full_run):
    """bf16 at both tiny shapes: engine and reference run the same model, so they differ only by batching (left
    padding, other matmul shapes: bf16 rounding, measured <= 1e-3); 1e-2 leaves a 10x margin, while scoring the
    wrong position or token moves P(yes) by the spread of the probabilities (std ~0.4 at the larger shape)."""
    doc = full_run[0]
    rows = doc["sections"]["scoring"]["rows"]
    assert [r["case"].split()[0] for r in rows] == [G.TINY_SMALL.name, G.TINY_LARGE.name]
    for r in rows:
        assert r["max_abs_dprob"] < 1e-2 and r["verified"], r
        assert 200 < r["prompt_tokens_mean"] < 400  # ReLLa prompts of the ML-100K length
        assert finite_positive(r["fraction_of_peak"]) and finite_positive(r["reference_fraction_of_peak"])
    assert rows[1]["prob_std"] > 0.1  # the probabilities differ between prompts: agreement is not trivial


def test_lora_small_models_and_serving_rows(full_run):
    s = full_run[0]["sections"]
    (lora,) = s["lora"]["rows"]
    assert lora["steps_timed"] >= 1 and finite_positive(lora["tokens_per_s"]) and lora["rate"] < lora["tokens_per_s"]
    assert lora["mfu_6NT"] == pytest.approx(1.5 * lora["fraction_of_peak_4NT"])
    assert all(math.isfinite(x) for x in lora["loss_first_last"])
    assert any(n.startswith("8-bit: not run, bitsandbytes wheel is") for n in s["lora"]["notes"])
    assert [r["case"].split()[0] for r in s["small_models"]["rows"]] == ["lightgcn", "sasrec", "projector"]
    (serving,) = s["serving"]["rows"]
    assert serving["mean_batch"] > 1  # concurrent requests really shared engine calls
    assert serving["max_abs_dprob"] < 1e-2 and serving["verified"]


def test_dry_run_imports_only_what_the_gpu_machine_has(full_run):
    doc, origins, _, _ = full_run
    modules = doc["meta"]["modules"]
    assert "torch" in modules and "pydantic" in modules and not set(BLOCKED) & set(modules)
    allowed = {norm(d) for d in GPU_DISTRIBUTIONS} | carried_distributions() | LOCAL_HTTP_STACK
    owners = importlib.metadata.packages_distributions()
    site = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    # outside site-packages: the standard library (under sys.base_prefix), this repo (not REPO itself: it may
    # hold the venv), or made in memory (no file: cython_runtime, __mp_main__)
    elsewhere = (sys.base_prefix, str(REPO / "platform"), str(REPO / "benchmarks"))
    missing = {}
    for name in modules:
        file = origins.get(name)
        below = top_folder(file, site) if file else ""
        if not below:
            assert file is None or name in sys.stdlib_module_names or file.startswith(elsewhere), (name, file)
            continue
        dists = owners.get(name) or owners.get(below, [])  # scipy's _csparsetools lives in scipy/sparse/
        if not {norm(d) for d in dists} & allowed:
            missing[name] = dists
    assert not missing, f"imported, but neither on the GPU image nor carried: {missing}"


def top_folder(file: str, site: list[str]) -> str:
    """The first path component of ``file`` below a site-packages folder."""
    for root in site:
        if file.startswith(root):
            return Path(os.path.relpath(file, root)).parts[0]
    return ""


def test_the_wrapper_blocks_imports_the_way_absence_does(tmp_path):
    code = WRAPPER.format(blocked=BLOCKED, origins=str(tmp_path / "o.json"), script=str(tmp_path / "probe.py"))
    probe = "import importlib.util\nassert importlib.util.find_spec('ray') is None\nimport ray\n"
    (tmp_path / "probe.py").write_text(probe)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr


def test_a_failing_section_is_recorded_and_the_others_still_run(tmp_path, tokenizer_dir):
    """--batch-sizes 0 is an invalid llm.batch_size: only the scoring section uses it."""
    proc, doc, _ = dry_run(tmp_path, tokenizer_dir, "--sections", "peak,scoring,small_models", "--batch-sizes", "0")
    assert proc.returncode == 1, proc.stderr[-2000:]
    s = doc["sections"]
    assert list(s) == ["peak", "scoring", "small_models"]
    assert s["scoring"]["status"] == "error" and "batch_size" in s["scoring"]["error"]
    assert "Traceback" in s["scoring"]["traceback"]
    assert s["peak"]["status"] == s["small_models"]["status"] == "ok" and len(s["small_models"]["rows"]) == 3
    assert "## scoring: error" in (tmp_path / "results" / G.MD_NAME).read_text()


def fake_check(tmp_path, budget_s: float) -> G.Check:
    return G.Check(
        device="cpu",
        dtype_name="float32",
        tiny=True,
        out=tmp_path,
        tokenizer_path=tmp_path,
        budget_s=budget_s,
        plan=G.TINY_PLAN,
        command="test",
    )


def test_the_runner_isolates_errors_and_skips_past_the_budget(tmp_path, monkeypatch):
    ran = []

    def ok(name):
        return lambda ck: ran.append(name) or {"rows": [{"case": name, "unit": "x", "rate": 1.0}]}

    def boom(ck):
        ran.append("scoring")
        raise ValueError("bad option\nsecond line")

    clock = {"now": 0.0}

    def slow(ck):
        ran.append("lora")
        clock["now"] = 2.0  # the run's clock passes the 1 s budget during this section
        return {"rows": []}

    funcs = {"peak": ok("peak"), "scoring": boom, "lora": slow, "small_models": ok("small"), "serving": ok("serving")}
    monkeypatch.setattr(G, "SECTION_FUNCS", funcs)
    monkeypatch.setattr(G.Check, "elapsed", lambda self: clock["now"])
    ck = fake_check(tmp_path, budget_s=1.0)
    assert ck.run(list(G.SECTIONS)) == 1
    assert ran == ["peak", "scoring", "lora"]  # the budget had passed when small_models was due
    s = json.loads((tmp_path / G.JSON_NAME).read_text())["sections"]
    assert s["scoring"] | {"traceback": ""} == {
        "status": "error",
        "error": "ValueError: bad option | second line",
        "traceback": "",
        "seconds": s["scoring"]["seconds"],
    }
    assert [s[n]["status"] for n in G.SECTIONS] == ["ok", "error", "ok", "skipped", "skipped"]
    assert "budget" in s["serving"]["reason"]


def test_micro_batcher_shares_calls_and_routes_results_and_errors():
    calls = []

    def fn(items):
        calls.append(len(items))
        if "bad" in items:
            raise RuntimeError("engine failed")
        return [x * 10 for x in items]

    b = G.MicroBatcher(fn, max_batch=4, wait_s=0.2)
    try:
        results, barrier = {}, threading.Barrier(8)

        def client(i):
            barrier.wait()
            results[i] = b(i)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == {i: i * 10 for i in range(8)}
        assert sum(calls) == 8 and max(calls) <= 4 and len(calls) < 8  # at most 4 per call, and shared
        with pytest.raises(RuntimeError, match="engine failed"):
            b("bad")
    finally:
        b.close()
    serial = G.SerialReplica(fn)
    assert serial(3) == 30 and calls[-1] == 1


def test_sections_option_rejects_unknown_names_and_keeps_the_run_order():
    assert G.parse_sections("serving, peak") == ["peak", "serving"]
    with pytest.raises(Exception, match="unknown section"):
        G.parse_sections("peak,gpu")
