"""`swaa run / eval / sweep` hand the runner one RunSpec made from every generation option (none dropped, as
`sweep --system` once was)."""

from __future__ import annotations

from dataclasses import fields

import pytest

from swaa_core.cli import main
from swaa_core.eval import runner, sweep
from swaa_core.eval.run_spec import RunSpec

OPTIONS = ["-n", "7", "--cot", "--timing-tokens", "5", "--system", "Be brief.", "--backend", "blocked",
           "--decode-path", "fixed"]  # fmt: skip
EXPECTED = RunSpec(max_new_tokens=7, cot=True, timing_tokens=5, system="Be brief.", backend="blocked",
                   decode_path="fixed", score_logprob=False)  # fmt: skip


class Handed(Exception):
    """Raised by the stand-in runner once it has the run value: the command needs to go no further."""


@pytest.fixture
def handed(monkeypatch):
    got: list[RunSpec] = []

    def take(spec):
        got.append(spec)
        raise Handed

    monkeypatch.setattr(runner, "compare", lambda *a, spec=None, **k: take(spec))
    monkeypatch.setattr(runner, "evaluate_shared", lambda *a, spec=None, **k: take(spec))
    monkeypatch.setattr(sweep, "run_sweep", lambda loaded, s, *a, **k: take(s.run))
    return got


COMMANDS = {
    "run": ["run", "The sky is blue. What colour is the sky?"],
    "eval": ["eval", "--task", "passkey", "--length", "200", "--samples", "1", "--no-logprob"],
    "sweep": ["sweep", "--lengths", "200", "--depths", "0.5", "--samples", "1", "--no-logprob", "--out"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_generation_option_reaches_the_run_value(command, handed, tiny_folder, tmp_path):
    argv = COMMANDS[command] + ([str(tmp_path / "s.jsonl")] if command == "sweep" else [])
    with pytest.raises(Handed):
        main([*argv, "--model", tiny_folder, "--recipe", "swa", "--window", "16", *OPTIONS])
    assert handed == [EXPECTED]
    differs = {f.name for f in fields(RunSpec) if getattr(EXPECTED, f.name) != getattr(RunSpec(), f.name)}
    assert differs == {f.name for f in fields(RunSpec)} - {"warmup"}  # the one setting with no option: always on


def test_the_older_static_cache_option_is_the_fixed_path(handed, tiny_folder):
    with pytest.raises(Handed):
        main([*COMMANDS["run"], "--model", tiny_folder, "--static-cache", "--answer", "blue"])
    assert handed == [RunSpec(max_new_tokens=64, decode_path="fixed")]  # run's own default; --answer scores


@pytest.mark.parametrize(
    "order", [["--decode-path", "eager", "--static-cache"], ["--static-cache", "--decode-path", "eager"]]
)
def test_the_older_static_cache_option_beside_another_path_is_refused_by_name(order, handed, tiny_folder, capsys):
    """Both orders: as one argparse destination, the last flag won and the other was dropped without a word."""
    code = main([*COMMANDS["run"], "--model", tiny_folder, *order])
    assert code != 0 and not handed
    assert "static_cache=True asks for the fixed decode path, but decode_path asks for" in capsys.readouterr().err
