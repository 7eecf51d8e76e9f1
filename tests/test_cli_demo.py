"""``metagpt-vllm-fix demo`` as users run it: a fresh process, MetaGPT 0.7 for real, a server on 127.0.0.1."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import clean_env
from metagpt_vllm_fix.masking import mask

CLI = [sys.executable, "-m", "metagpt_vllm_fix"]
KEY = "demo-key-for-the-test-0123456789"
NOISE = ("Package root set to", "PROJECT_ROOT set", "usage calculation failed", "FutureWarning", "Traceback",
         "Warning: model not found")


def run_demo(tmp_path, *args: str) -> subprocess.CompletedProcess:
    """The demo in an empty directory with an empty HOME: it must need neither a config nor a clean CWD."""
    home = tmp_path / "home"
    home.mkdir()
    return subprocess.run([*CLI, "demo", *args], capture_output=True, text=True, env=clean_env(home),
                          cwd=str(tmp_path), timeout=120)


def test_demo_tells_the_401_then_400_then_answer_story_with_the_seed_config(tmp_path):
    proc = run_demo(tmp_path, "--api-key", KEY)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    upstream, rest = out.split("1. MetaGPT as shipped (plugin removed)")[1].split("2. With the api_key fix alone")
    key_only, fixed = rest.split("3. With metagpt-vllm-fix (every fix)")
    assert "answers as vLLM 0.3.3" in out and "no max_token line (MetaGPT asks for 4096), calc_usage true" in out
    assert "Authorization: Bearer sk-xxx, max_tokens 4096 -> 401" in upstream
    assert "401 openai.AuthenticationError" in upstream
    assert f"Authorization: Bearer {mask(KEY)}, max_tokens 4096 -> 400" in key_only
    assert "This model's maximum context length is 4096 tokens" in key_only
    assert fixed.count(f"Authorization: Bearer {mask(KEY)}") == 2
    assert "max_tokens 4096 -> 400" in fixed and "no max_tokens -> 200" in fixed
    assert "MetaGPT returned 'echo: " in fixed and "the server's own count" in fixed
    assert "Set llm.max_token below 4096 to avoid it" in fixed
    assert "ok      The seed's config works as written" in out


def test_demo_never_prints_the_key_and_stays_quiet(tmp_path):
    proc = run_demo(tmp_path, "--api-key", KEY)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert KEY not in proc.stdout + proc.stderr
    assert mask(KEY) in proc.stdout
    assert proc.stderr == ""
    assert not [noise for noise in NOISE if noise in proc.stdout]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"], "MetaGPT's logs/ and workspace/ leaked into CWD"


def test_demo_random_key_is_shown_masked_only(tmp_path):
    proc = run_demo(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (masked,) = set(re.findall(r"--api-key (\S+) \(random", proc.stdout))
    assert re.fullmatch(r"[\w-]{3}\.\.\.[\w-]{3}", masked)
    # secrets.token_urlsafe(24) is 32 characters of [A-Za-z0-9_-]; nothing that long may appear
    long_words = set(re.findall(r"[A-Za-z0-9_-]{24,}", proc.stdout + proc.stderr))
    assert not long_words - {"METAGPT_VLLM_FIX_DISABLE"}
