"""--threads: one option on every command that computes, 1 thread by default unless OMP_NUM_THREADS is set."""

from __future__ import annotations

import pytest
import torch

from robustvae import api
from robustvae.cli import command, main
from robustvae.device import cpu_threads
from robustvae.errors import RobustVAEError

COMPUTING = {
    "train": "train",
    "eval": "load",
    "attack": "attack",
    "certify": "certify_models",
    "compress": "compress",
    "demo": None,
}


def test_cpu_threads_defaults_to_one_follows_omp_and_restores(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with cpu_threads() as n:
        assert n == torch.get_num_threads() == 1
    with cpu_threads(2) as n:
        assert n == torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    with cpu_threads() as n:  # torch follows OMP_NUM_THREADS: nothing is changed
        assert n == before
    with pytest.raises(RobustVAEError, match="--threads must be a positive integer, got 0"), cpu_threads(0):
        pass


def test_every_computing_command_has_the_same_threads_option():
    cli = command()
    helps = {name: next(p.help for p in cli.commands[name].params if "--threads" in p.opts) for name in COMPUTING}
    assert len(set(helps.values())) == 1 and "default: 1 unless OMP_NUM_THREADS is set" in helps["train"]


@pytest.mark.parametrize("name", [n for n, f in COMPUTING.items() if f])
def test_each_command_computes_on_the_threads_asked_for(name, monkeypatch, tmp_path, capsys):
    """The command's library call runs with torch's threads set by --threads (and 1 without it)."""
    seen = []

    def record(*args, **kwargs):
        seen.append(torch.get_num_threads())
        raise RobustVAEError("stop here")

    monkeypatch.setattr(api, COMPUTING[name], record)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    args = {
        "train": ["train", "--preset", "vdvae-mnist-tiny", "--out", str(tmp_path / "t")],
        "eval": ["eval", str(tmp_path / "ckpt")],
        "attack": ["attack", "m", "--out", str(tmp_path / "a"), "--device", "cpu"],
        "certify": ["certify", "m", "--out", str(tmp_path / "c")],
        "compress": ["compress", "m", "--images", str(tmp_path), "--layers", "1", "--out", str(tmp_path / "z")],
    }[name]
    before = torch.get_num_threads()
    assert main([*args, "--threads", "2"]) == 2 and main(args) == 2
    assert "stop here" in capsys.readouterr().err
    assert seen == [2, 1] and torch.get_num_threads() == before
