"""Publish a submission folder's adapter on the Hugging Face Hub (``flowertune submit --push-to-hub``).

The Hub repository gets what a FlowerTune submission links: the PEFT adapter at the repository's root (so
``PeftModel.from_pretrained(base, "owner/name")`` loads it), the submission README as the model card (with
the Hub's metadata header: base model, ``library_name: peft``, tags), the evaluation results, the resolved
config and the plots. The submission folder itself is not changed: the upload is staged in a temporary
directory. Everything that can be known before building is checked first (:func:`check_can_push`).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from flowertune.config import ConfigError


def check_can_push(repo_id: str, private: bool = False) -> str:
    """Before anything is built: a valid repo id, online, a token, the Hub answering, and with ``private`` no
    public repository of that name to upload into; returns the user.

    Raises :class:`ConfigError` with one line naming the problem and the fix.
    """
    from huggingface_hub import HfApi, constants, get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise ConfigError(f"--push-to-hub {repo_id!r} is not a Hub repository id (owner/name): "
                          f"{str(exc).splitlines()[0]}") from None
    if "/" not in repo_id:
        raise ConfigError(f"--push-to-hub {repo_id!r}: give owner/name (your user or organisation, then the name)")
    if constants.HF_HUB_OFFLINE:
        raise ConfigError("--push-to-hub: HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it (or build the "
                          "folder without --push-to-hub and upload it later)")
    token = get_token()
    if not token:
        raise ConfigError("--push-to-hub: no Hugging Face token; run `hf auth login` or set HF_TOKEN (a token with "
                          "write access)")
    try:
        who = HfApi().whoami(token=token)
    except Exception as exc:  # noqa: BLE001 - any failure to reach the Hub is the same one-line refusal
        raise ConfigError(f"--push-to-hub: the Hub at {constants.ENDPOINT} did not answer "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}); "
                          "check the network and the token") from None
    if private:
        from huggingface_hub.utils import RepositoryNotFoundError

        try:
            info = HfApi().repo_info(repo_id, repo_type="model", token=token)
        except RepositoryNotFoundError:
            info = None
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(f"--push-to-hub {repo_id}: cannot tell whether it exists ({type(exc).__name__}); "
                              "check the network and the token") from None
        if info is not None and not info.private:
            raise ConfigError(f"--push-to-hub {repo_id} --private: the repository exists and is public; make it "
                              "private on the Hub first, or choose another name")
    return str(who.get("name", ""))


def model_card(readme: str, config: dict[str, Any], challenge: str | None) -> str:
    """The submission README with the Hub's YAML metadata header."""
    tags = ["flowertune", "federated-learning", "flower", "lora", *([challenge] if challenge else [])]
    base = str(config.get("model.name", ""))
    # only a Hub id names a base model there: not 'embedded', a .gguf file or a local path (kept off a public card)
    hub_id = re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", base) is not None and not Path(base).exists()
    header = ["---", "library_name: peft", *([f"base_model: {json.dumps(base)}"] if hub_id else []),
              "tags:", *[f"- {t}" for t in tags], "---", ""]
    return "\n".join(header) + readme


def hub_files(folder: Path) -> dict[str, Path]:
    """What goes to the Hub from a submission ``folder``: repository path -> local file."""
    files: dict[str, Path] = {}
    for f in sorted((folder / "adapter").iterdir()):
        if f.is_file():
            files[f.name] = f
    for name in ("config.json", "run-config.toml"):
        if (folder / name).is_file():
            files[name] = folder / name
    if (folder / "eval" / "results.json").is_file():
        files["eval/results.json"] = folder / "eval" / "results.json"
    for f in sorted((folder / "plots").glob("*")) if (folder / "plots").is_dir() else []:
        files[f"plots/{f.name}"] = f
    return files


def stage(folder: Path, challenge: str | None, into: Path) -> list[str]:
    """Copy the Hub's file set of ``folder`` into ``into`` with the model card; returns the repository paths."""
    config = json.loads((folder / "config.json").read_text())
    config = config.get("config", config) if isinstance(config, dict) else {}
    for rel, src in hub_files(folder).items():
        dest = into / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)
    (into / "README.md").write_text(model_card((folder / "README.md").read_text(encoding="utf-8"), config, challenge),
                                    encoding="utf-8")
    return sorted(str(p.relative_to(into)) for p in into.rglob("*") if p.is_file())


def push(folder: Path, repo_id: str, challenge: str | None, private: bool = False) -> str:
    """Create (or reuse) the model repository and upload the staged files in one commit; returns its URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="flowertune-hub-") as tmp:
        stage(Path(folder), challenge, Path(tmp))
        api.upload_folder(folder_path=tmp, repo_id=repo_id, repo_type="model",
                          commit_message="flowertune submit: adapter, model card, results")
    return str(url)
