"""The command line: list, run, report, resume, and one clear error line for every kind of bad input."""
import json
import os
import stat

import pytest

from ablations.cli import main
from ablations import rundir as rt


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    from ablations.registry import AUGS, DATASETS, LOSSES, METHODS, MODELS, OPTIMIZERS, SECTIONS
    from ablations.study import STUDIES

    lines = out.splitlines()
    assert [ln.split()[0] for ln in lines if ln.startswith("  ") and ln.split()[0] in STUDIES.names()] \
        == STUDIES.names() and "cifar10-regularization" in STUDIES.names()
    assert {"finetune", "fixmatch", "language_model", "pseudolabel", "supervised", "zeroshot"} <= set(METHODS.names())
    for title, reg in (("methods", METHODS), ("models", MODELS), ("datasets", DATASETS), ("losses", LOSSES), ("augmentations", AUGS),
                       ("optimisers", OPTIMIZERS), ("report sections", SECTIONS)):
        assert f"{title}: {', '.join(reg.names())}" in lines, title
    assert {"vgg3", "cifar10", "flip", "ce"} <= set(MODELS.names()) | set(DATASETS.names()) | set(AUGS.names()) \
        | set(LOSSES.names())


def test_run_report_and_refuse_overwrite(tmp_path, tiny_study, capsys):
    out = tmp_path / "out"
    assert main(["run", str(tiny_study), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.count("done ") == 2 and "report:" in text
    sdir = out / "tiny" / "smoke"
    md = (sdir / "report.md").read_text()
    assert "| plain | 50 |" in md and "| regular | 60 |" in md and "curves.png" in md
    assert (sdir / "curves.png").stat().st_size > 1000
    assert "data:image/png;base64," in (sdir / "report.html").read_text()
    # a second run into the same dir is refused, and nothing is touched
    before = (sdir / "plain" / "seed0" / rt.RESULT).read_text()
    assert main(["run", str(tiny_study), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already holds a finished run" in err and "--overwrite" in err and err.count("\n") == 1
    assert (sdir / "plain" / "seed0" / rt.RESULT).read_text() == before
    # --continue skips finished runs; report regenerates from files alone
    assert main(["run", str(tiny_study), "--out", str(out), "--continue"]) == 0
    (sdir / "report.md").unlink()
    assert main(["report", str(sdir)]) == 0
    assert "| plain | 50 |" in (sdir / "report.md").read_text()
    # ... but not a finished run made with other settings: that would pass old numbers off as new
    assert main(["run", str(tiny_study), "--out", str(out), "--continue", "--set", "train.epochs=3"]) == 2
    err = capsys.readouterr().err
    assert "config.json differs" in err and "train.epochs: 2 -> 3" in err and err.count("\n") == 1
    assert (sdir / "plain" / "seed0" / rt.RESULT).read_text() == before


def test_resume_cli(tmp_path, tiny_study, capsys):
    out = tmp_path / "out"
    assert main(["run", str(tiny_study), "--out", str(out), "--variant", "plain"]) == 0
    rd = out / "tiny" / "smoke" / "plain" / "seed0"
    (rd / rt.RESULT).unlink()  # as if it had stopped after its last checkpoint
    assert main(["resume", str(rd)]) == 0
    assert (rd / rt.RESULT).exists()
    assert main(["resume", str(rd)]) == 0
    assert "nothing to resume" in capsys.readouterr().out


@pytest.mark.parametrize("argv, words", [
    (["run", "cifar10-regularisation"], ["unknown study", "did you mean", "cifar10-regularization"]),
    (["run", "STUDY", "--variant", "plian"], ["unknown variant 'plian'", "plain"]),
    (["run", "STUDY", "--preset", "fast"], ["unknown preset 'fast'"]),
    (["run", "STUDY", "--set", "optim.lrr=0.1"], ["optim.lrr", "did you mean optim.lr"]),
    (["run", "STUDY", "--set", "optim.lr=-1"], ["--set: optim.lr must be > 0, got -1"]),
    (["run", "STUDY", "--set", "train.batch_size=0"], ["--set: train.batch_size must be >= 1, got 0"]),
    (["run", "STUDY", "--set", "train.epochs=0"], ["train.epochs", "must be >= 1"]),
    (["run", "STUDY", "--set", "model.hidden=999"], ["model vgg1 has no key 'hidden'", "lstm"]),
    (["run", "STUDY", "--set", "train.epochs=ten"], ["train.epochs", "integer"]),
    (["run", "STUDY", "--set", "model.name=vgg9"], ["unknown model 'vgg9'"]),
    (["run", "STUDY", "--set", "data.name=cifar11"], ["unknown dataset 'cifar11'"]),
    (["run", "STUDY", "--set", "noequals"], ["KEY=VALUE"]),
    (["run", "missing.yaml"], ["missing.yaml", "does not exist"]),
    (["report", "/nonexistent/dir"], ["/nonexistent/dir"]),
    (["resume", "/nonexistent/dir"], ["/nonexistent/dir"]),
])
def test_bad_input_one_clear_line(tmp_path, tiny_study, capsys, argv, words):
    argv = [str(tiny_study) if a == "STUDY" else a for a in argv]
    if argv[0] == "run":
        argv += ["--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for w in words:
        assert w in err
    assert not (tmp_path / "out").exists()  # bad input writes nothing: a rerun is not refused


def test_missing_cifar_says_what_to_put_where(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ABLATIONS_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("ABLATIONS_CACHE", str(tmp_path / "cache"))
    (tmp_path / "empty").mkdir()
    assert main(["run", "cifar10-regularization", "--preset", "smoke", "--variant", "baseline",
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "CIFAR-10" in err and "ABLATIONS_DATA" in err and err.count("\n") == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_out(tmp_path, tiny_study, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    assert main(["run", str(tiny_study), "--out", str(ro / "x")]) == 2
    assert "cannot write" in capsys.readouterr().err


def test_unwritable_out_file_in_the_way(tmp_path, tiny_study, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    assert main(["run", str(tiny_study), "--out", str(blocker)]) == 2
    assert "cannot write" in capsys.readouterr().err
    assert blocker.read_text() == "not a dir"


def test_report_from_fake_run_files(tmp_path):
    """The report reads run files only: two seeds give mean ± std; summary.csv says the same for programs."""
    from ablations.config import make
    from ablations.report.render import write_report

    for variant, seed, acc in (("v1", 0, 70.0), ("v1", 1, 74.0), ("v2", 0, 80.0), ("v2", 1, 81.0)):
        d = tmp_path / "s" / variant / f"seed{seed}"
        d.mkdir(parents=True)
        cfg = make(study="fake", variant=variant, seed=seed, target=73.0 if variant == "v1" else None).to_dict()
        (d / rt.CONFIG).write_text(json.dumps(cfg))
        (d / rt.METRICS).write_text("".join(json.dumps({"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e,
                                                        "train_acc": 50 + e, "val_acc": 45 + e}) + "\n"
                                            for e in (1, 2, 3)))
        (d / rt.RESULT).write_text(json.dumps({"test_acc": acc, "best_epoch": 3, "epochs": 3, "wall_time": 90,
                                               "device": "cpu", "precision": "bfloat16"}))
    md = write_report(tmp_path / "s").read_text()
    from ablations.report.stats import welch

    p = welch([70.0, 74.0], [80.0, 81.0])[2]  # the second variant against the first: Welch's t-test
    assert "| v1 | 73 | 72.00 ± 2.83 | 2 | -1.00 (within 2) | reference | 3, 3 | 3, 3 | 90 s | cpu/bfloat16 |" in md
    assert f"| v2 |  | 80.50 ± 0.71 | 2 |  | +8.50 (not significant, p={p:.2g}) | 3, 3 |" in md and p > 0.05
    assert "total wall time 6.0 min" in md
    # how training went: the loss after epochs 1, 2 (half of 3) and 3, the last train accuracy vs the test's
    assert "| variant | loss, epoch 1 | loss, epoch 2 | loss, epoch 3 | train acc | test acc | gap | img/s | runs |" in md
    assert "| v1 | 1.000 ± 0.000 | 0.500 ± 0.000 | 0.333 ± 0.000 | 53.00 ± 0.00 | 72.00 ± 2.83 | -19.00 ± 2.83 " \
           "| n/a | 2 |" in md
    assert "| v2 | 1.000 ± 0.000 | 0.500 ± 0.000 | 0.333 ± 0.000 | 53.00 ± 0.00 | 80.50 ± 0.71 | -27.50 ± 0.71 " in md
    csv = (tmp_path / "s" / "summary.csv").read_text().splitlines()
    assert csv == ["variant,metric,mean,std,seeds,runs,target,met,wall_time_s,vs_reference,verdict,p_value",
                   "v1,test_acc,72,2.82843,2,2,73,false,90.0,,reference,",
                   f"v2,test_acc,80.5,0.707107,2,2,,,90.0,8.5,not significant,{p:.4g}"]
    # --copy-to: the Markdown and its PNGs land in docs/, links rewritten
    dest = write_report(tmp_path / "s", copy_to=tmp_path / "docs" / "fake.md")
    assert dest == tmp_path / "docs" / "fake.md"
    assert "](fake-curves.png)" in dest.read_text()
    assert (tmp_path / "docs" / "fake-curves.png").stat().st_size > 1000
    assert (tmp_path / "docs" / "fake.csv").read_text().splitlines() == csv
    # re-rendering keeps the hand-written part above the first heading and regenerates the rest
    dest.write_text("<!-- how it was made -->\n> measured here\n\n" + dest.read_text().replace("v1", "stale"))
    text = write_report(tmp_path / "s", copy_to=dest).read_text()
    assert text.startswith("<!-- how it was made -->\n> measured here\n\n# ") and "stale" not in text


def test_copy_keeps_shown_pngs_and_unlinks_the_ones_it_does_not_copy(tmp_path):
    """--copy-to copies what the report shows; a PNG it only links (every run's confusion matrix) stays in the
    run dir, so the copy names it without a link rather than with a broken one."""
    from ablations.report.render import _relink

    out, dest = tmp_path / "run", tmp_path / "docs" / "x.md"
    out.mkdir()
    dest.parent.mkdir()
    for name in ("shown.png", "other.png"):
        (out / name).write_bytes(b"png")
    md = _relink("![a](shown.png) Other runs: [b (seed 1)](other.png), [c](https://x.org/page)", out, dest, "x")
    assert md == "![a](x-shown.png) Other runs: b (seed 1), [c](https://x.org/page)"
    assert (dest.parent / "x-shown.png").exists() and not (dest.parent / "x-other.png").exists()


def _metrics(d):
    return [{k: v for k, v in r.items() if k not in ("epoch_time", "time", "img_per_s", "epoch_train_s")}
            for r in rt.read_metrics(d / rt.METRICS)]


@pytest.mark.parametrize("how,keep", [("resume", "last"), ("continue", "last"), ("continue", "best")])
def test_cli_resume_equals_uninterrupted(tmp_path, tiny_study, interrupt_after, capsys, how, keep):
    """`ablations resume DIR` and `run --continue` after a crash give what an uninterrupted run gives (with
    train.keep=best too: the best epoch's weights travel in the checkpoint)."""
    sets = ["--set", "train.epochs=3", "--set", f"train.keep={keep}", "--variant", "regular"]
    assert main(["run", str(tiny_study), "--out", str(tmp_path / "full"), *sets]) == 0
    restore = interrupt_after(2)
    assert main(["run", str(tiny_study), "--out", str(tmp_path / "cut"), *sets]) == 130
    restore()
    cut = tmp_path / "cut" / "tiny" / "smoke" / "regular" / "seed0"
    full = tmp_path / "full" / "tiny" / "smoke" / "regular" / "seed0"
    assert not (cut / rt.RESULT).exists()
    if how == "resume":
        assert main(["resume", str(cut)]) == 0
    else:
        assert main(["run", str(tiny_study), "--out", str(tmp_path / "cut"), "--continue", *sets]) == 0
    assert _metrics(cut) == _metrics(full)
    assert (cut / rt.FINAL).read_bytes() == (full / rt.FINAL).read_bytes()
    assert rt.read_json(cut / rt.RESULT)["test_acc"] == rt.read_json(full / rt.RESULT)["test_acc"]
    assert len(rt.Run.read(cut).invocations) == 2


def test_keep_best_tests_and_exports_the_best_validation_epoch(tmp_path, tiny_study, monkeypatch, capsys):
    """train.keep=best: with validation accuracy falling after epoch 1, the test and final.safetensors are
    epoch 1's weights (kept in the checkpoint), not the last epoch's; keep=last exports the last."""
    import torch
    from safetensors.torch import load_file

    from ablations.methods.supervised import Supervised

    real = Supervised.evaluate

    def falling(self, split):
        out = real(self, split)
        if split == "val":
            out["val_acc"] = 90.0 - 10 * len(rt.read_metrics(self.run_dir / rt.METRICS))  # 90, 80, 70
        return out

    monkeypatch.setattr(Supervised, "evaluate", falling)
    dirs = {}
    for keep in ("best", "last"):
        assert main(["run", str(tiny_study), "--out", str(tmp_path / keep), "--variant", "plain",
                     "--set", "train.epochs=3", "--set", f"train.keep={keep}"]) == 0
        dirs[keep] = tmp_path / keep / "tiny" / "smoke" / "plain" / "seed0"
    res = rt.read_json(dirs["best"] / rt.RESULT)
    assert res["best_epoch"] == res["kept_epoch"] == 1 and res["val_acc"] == 70.0  # the last epoch's record
    assert rt.read_json(dirs["last"] / rt.RESULT)["kept_epoch"] == 3
    ck = rt.load_checkpoint(dirs["best"] / rt.CHECKPOINT)
    best, final = ck["best_state"], load_file(dirs["best"] / rt.FINAL)
    assert all(torch.equal(final[k], v) for k, v in best.items() if k in final)
    assert not all(torch.equal(final[k], v) for k, v in ck["model"].items() if k in final)  # not the last
    last = load_file(dirs["last"] / rt.FINAL)
    assert all(torch.equal(last[k], v) for k, v in ck["model"].items() if k in last)  # same run until the end
    assert "the reported number is that epoch's model: train.keep=best" in \
        (tmp_path / "best" / "tiny" / "smoke" / "report.md").read_text()


def test_keep_best_without_validation_stops_after_the_first_epoch(tmp_path, tiny_study, capsys):
    args = ["run", str(tiny_study), "--out", str(tmp_path / "o"), "--variant", "plain",
            "--set", "train.keep=best", "--set", "data.val_fraction=0"]
    assert main(args) == 2  # bad input, said in one line
    assert "train.keep=best: epoch 1 recorded no val_acc" in capsys.readouterr().err


def test_sigterm_stops_a_run_like_ctrl_c(tmp_path, tiny_study, monkeypatch, capsys):
    """`kill` (SIGTERM) mid-run: exit 143, the invocation recorded (its wall time counts), the lock released,
    `--continue` finishes it; the process's own SIGTERM handler is back afterwards."""
    import os
    import signal

    real = rt.save_checkpoint

    def save_then_term(path, state):
        real(path, state)
        if state["epoch"] == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(rt, "save_checkpoint", save_then_term)
    before = signal.getsignal(signal.SIGTERM)
    args = ["run", str(tiny_study), "--out", str(tmp_path / "o"), "--variant", "plain"]
    assert main(args) == 143
    assert signal.getsignal(signal.SIGTERM) is before
    d = tmp_path / "o" / "tiny" / "smoke" / "plain" / "seed0"
    (inv,) = rt.Run.read(d).invocations
    assert inv["finished"] is False and inv["wall_time"] > 0 and not (d / rt.LOCK).exists()
    monkeypatch.setattr(rt, "save_checkpoint", real)
    assert main(args + ["--continue"]) == 0
    assert [i["finished"] for i in rt.Run.read(d).invocations] == [False, True]


def test_wall_time_counts_the_epochs_of_a_process_that_left_no_record(tmp_path, tiny_study):
    """A process killed outright (SIGKILL) records no invocation; the epochs it ran still count (their times)."""
    assert main(["run", str(tiny_study), "--out", str(tmp_path / "o"), "--variant", "plain",
                 "--set", "train.epochs=3"]) == 0
    d = tmp_path / "o" / "tiny" / "smoke" / "plain" / "seed0"
    recs = rt.read_metrics(d / rt.METRICS)
    (d / rt.INVOCATIONS).write_text(json.dumps({"wall_time": 5.0, "resumed_from_epoch": 2, "finished": True}) + "\n")
    assert rt.Run.read(d).wall_time == pytest.approx(5.0 + recs[0]["epoch_time"] + recs[1]["epoch_time"])


@pytest.mark.parametrize("damage", [b"", b"garbage, not a checkpoint", "half"])
def test_corrupt_checkpoint_one_line_nothing_touched(tmp_path, tiny_study, interrupt_after, capsys, damage):
    interrupt_after(1)
    assert main(["run", str(tiny_study), "--out", str(tmp_path / "o"), "--variant", "plain"]) == 130
    d = tmp_path / "o" / "tiny" / "smoke" / "plain" / "seed0"
    ck = d / rt.CHECKPOINT
    ck.write_bytes(ck.read_bytes()[: len(ck.read_bytes()) // 2] if damage == "half" else damage)
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    capsys.readouterr()
    assert main(["resume", str(d)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and str(ck) in err, err
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before


def test_second_process_on_the_same_run_refuses(tmp_path, tiny_study, capsys):
    """A live lock (another process) on a run dir: one line naming the holder; its files untouched."""
    import subprocess
    import sys

    d = tmp_path / "o" / "tiny" / "smoke" / "plain" / "seed0"
    d.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket
        import time

        (d / rt.LOCK).write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(),
                                             "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "token": "x"}))
        assert main(["run", str(tiny_study), "--out", str(tmp_path / "o"), "--variant", "plain"]) == 2
        err = capsys.readouterr().err
        assert f"in use by process {holder.pid}" in err and err.count("\n") == 1
        assert sorted(p.name for p in d.iterdir()) == [rt.LOCK]
    finally:
        holder.kill()
        holder.wait()
    # the holder is dead now: its stale lock is taken over and the run goes through
    assert main(["run", str(tiny_study), "--out", str(tmp_path / "o"), "--variant", "plain"]) == 0
    assert (d / rt.RESULT).exists() and not (d / rt.LOCK).exists()


def test_corrupt_config_json_is_one_line(tmp_path, capsys):
    d = tmp_path / "s" / "p" / "v" / "seed0"
    d.mkdir(parents=True)
    (d / rt.CONFIG).write_text("{bad")
    assert main(["resume", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and str(d / rt.CONFIG) in err


def test_finished_run_is_never_replaced_without_overwrite(tmp_path, tiny_study):
    """Decided again under the lock: a run another process finished after this one planned is kept."""
    from ablations import loop
    from ablations.errors import RunError
    from ablations.study import get_study

    cfg = get_study(str(tiny_study)).resolve("smoke", ["plain"])[0]
    d = tmp_path / "r"
    loop.run(cfg, d)
    before = (d / rt.FINAL).read_bytes()
    with pytest.raises(RunError, match="already holds a finished run"):
        loop.run(cfg, d, restart=True)  # what a stale plan would ask for
    assert (d / rt.FINAL).read_bytes() == before
    loop.run(cfg, d, overwrite=True)  # --overwrite does replace it
    assert rt.Run.read(d).finished


def test_references_resume_first_and_finished_ones_are_skipped(tmp_path, capsys):
    study = tmp_path / "two.yaml"
    study.write_text("""
name: two
base:
  data: {name: synthetic, n_train: 120, n_test: 20, limit_eval: 20}
  model: {name: vgg1, width: 4, dense: 8}
  train: {epochs: 2, batch_size: 30, threads: 1}
presets: {smoke: {}}
variants:
  a:
    set: {method.init_from: b}
  b: {}
""")
    out = tmp_path / "o"
    assert main(["run", str(study), "--out", str(out)]) == 0
    a, b = out / "two/smoke/a/seed0", out / "two/smoke/b/seed0"
    # `--variant a` again: the finished `b` it references is skipped (its config unchanged), not refused
    capsys.readouterr()
    assert main(["run", str(study), "--out", str(out), "--variant", "a", "--continue"]) == 0
    assert "skip b seed 0: referenced, finished" in capsys.readouterr().out
    # both unfinished: `resume` takes `b` first although `a` sorts first by name (a needs b's weights)
    for d in (a, b):
        (d / rt.RESULT).unlink()
        (d / rt.CHECKPOINT).unlink()
    assert main(["resume", str(out)]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("done ")]
    assert [ln.split()[1] for ln in lines] == ["b", "a"]


def test_best_epoch_sentence_follows_the_method():
    from ablations.report.render import _best_by

    assert _best_by({"method": {"name": "supervised"}, "goal": "min"}) == "highest validation accuracy"
    assert _best_by({"method": {"name": "language_model"}, "goal": "max"}) == "lowest validation loss"


def test_report_lists_only_non_default_keys_for_every_method():
    """Measured against the defaults of the same entries, also for a method with cross-section rules
    (zeroshot needs epochs 0, so its entries' defaults alone would not pass them)."""
    from ablations.config import make
    from ablations.report.render import _nondefault

    cfg = make({"method.name": "zeroshot", "model.name": "mobilenet_v2", "train.epochs": 0, "data.limit": 48})
    assert _nondefault(cfg.to_dict()) == 'data.limit=48 train.epochs=0'


def test_an_option_added_since_a_run_is_no_config_change_at_its_default():
    """--continue on runs made before an option existed: the option at its default changes nothing; set to
    anything else, or an option whose value differs, it does."""
    from ablations.cli import _config_changes
    from ablations.config import make

    now = make({"data": {"name": "synthetic", "label_noise": 0.2}}).to_dict()
    old = json.loads(json.dumps(now))
    del old["data"]["noise_map"]  # the option did not exist when the run was made
    assert _config_changes(old, now) == []
    changed = make({"data": {"name": "synthetic", "label_noise": 0.2, "noise_kind": "asymmetric",
                             "noise_map": {"c0": "c1"}}}).to_dict()
    assert any(c.startswith("data.noise_map.c0: '<absent>' -> 'c1'") for c in _config_changes(old, changed))
    old["data"]["label_noise"] = 0.4
    assert _config_changes(old, now) == ["data.label_noise: 0.4 -> 0.2"]


def test_the_studys_comparisons_table(tmp_path):
    """Study `compare`: the difference the question rests on, its verdict over seeds, and whether the goal's
    difference is reached (a positive goal only counts when significant; a tolerance when the mean is inside)."""
    from ablations.config import make
    from ablations.report.render import write_report
    from ablations.report.stats import welch

    accs = {"ce": [60.0, 61.0, 60.5], "sce": [64.0, 64.5, 63.5], "gce": [61.0], "lc": [60.2, 60.3, 60.4],
            "sce2": [62.0, 63.6, 62.8], "lone": [60.0]}
    for variant, vals in accs.items():
        for seed, acc in enumerate(vals):
            d = tmp_path / "s" / variant / f"seed{seed}"
            d.mkdir(parents=True)
            (d / rt.CONFIG).write_text(json.dumps(make(study="fake", variant=variant, seed=seed).to_dict()))
            (d / rt.RESULT).write_text(json.dumps({"test_acc": acc, "epochs": 1, "wall_time": 10}))
    rt.write_study_record(tmp_path / "s", {"variants": list(accs), "compare": [
        {"variant": "sce", "vs": "ce", "need": 2.0}, {"variant": "sce", "vs": "ce", "need": 5.0},
        {"variant": "gce", "vs": "ce", "need": 0.5}, {"variant": "lc", "vs": "ce", "need": -0.3},
        {"variant": "ce", "vs": "sce", "need": None}, {"variant": "sce2", "vs": "ce", "need": 2.0},
        {"variant": "lc", "vs": "ce", "need": 0.0}, {"variant": "gce", "vs": "lone", "need": 0.5}]})
    md = write_report(tmp_path / "s").read_text()
    p = welch(accs["ce"], accs["sce"])[2]
    assert "### The study's comparisons" in md
    assert f"| sce | ce | +3.50 | 3 vs 3 | significant, p={p:.2g} | >= +2 | yes |" in md
    assert f"| sce | ce | +3.50 | 3 vs 3 | significant, p={p:.2g} | >= +5 | no (short by 1.50) |" in md
    # one seed against three: a prediction interval (t = 0.5 / (0.5 sqrt(4/3)), 2 df, p = 0.48); one against one: nothing
    assert ("| gce | ce | +0.50 | 1 vs 3 | not significant, p=0.48 | >= +0.5 | reached, not beyond the seed spread |"
            in md)
    assert "| gce | lone | +1.00 | 1 vs 1 | untested (n=1) | >= +0.5 | untested (n=1) |" in md
    # +2.3 reaches +2 but only 0.3 beyond it, inside the seed spread (0.8)
    assert "| sce2 | ce | +2.30 | 3 vs 3 |" in md and "| >= +2 | reached, not beyond the seed spread |" in md
    assert "| at least equal | no (short by 0.20) |" in md
    assert "| lc | ce | -0.20 | 3 vs 3 | not significant, p=" in md and "| no worse than -0.3 | yes |" in md
    assert f"| ce | sce | -3.50 | 3 vs 3 | significant, p={p:.2g} |  |  |" in md


def test_a_loss_metric_is_printed_to_the_thousandth(tmp_path):
    """A loss (~1.4 nats) is argued about in thousandths: the results table prints 3 decimals, so a miss of
    0.0006 reads -0.001, not -0.00, and a seed spread of 0.00002 reads ± 0.000 (accuracies keep 2)."""
    from ablations.config import make
    from ablations.report.render import write_report

    losses = {"wd": [1.4107], "ema": [1.40060, 1.40057]}
    for variant, vals in losses.items():
        for seed, v in enumerate(vals):
            d = tmp_path / "s" / variant / f"seed{seed}"
            d.mkdir(parents=True)
            cfg = make(study="fake", variant=variant, seed=seed).to_dict()
            cfg.update(metric="last10_loss", goal="min", target=1.4)
            (d / rt.CONFIG).write_text(json.dumps(cfg))
            (d / rt.RESULT).write_text(json.dumps({"last10_loss": v, "epochs": 16, "wall_time": 10}))
    rt.write_study_record(tmp_path / "s", {"variants": list(losses)})
    md = write_report(tmp_path / "s").read_text()
    assert "| wd | 1.4 | 1.411 | 1 | -0.011 ✗ | reference |" in md
    assert "| ema | 1.4 | 1.401 ± 0.000 | 2 | -0.001 ✗ | +0.010 (untested (n=1)) |" in md


@pytest.mark.parametrize("compare,words", [
    ("compare: [{variant: plain, vs: reglar}]", "compare[0].vs: 'reglar' is not a variant (did you mean 'regular'?)"),
    ("compare: [{variant: plain}]", "compare[0]: needs the keys variant and vs"),
    ("compare: [{variant: plain, vs: regular, need: lots}]", "compare[0].need must be a number"),
    ("compare: plain", "compare must be a list"),
    ("compare: [{variant: plain, vs: plain}]", "compare[0]: compares 'plain' with itself"),
])
def test_bad_study_comparisons_name_the_entry(tmp_path, tiny_study, capsys, compare, words):
    bad = tmp_path / "bad.yaml"
    bad.write_text(tiny_study.read_text() + compare + "\n")
    assert main(["run", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert words in err and str(bad) in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_curves_name_the_variants_without_a_validation_split(tmp_path, tiny_study, monkeypatch, capsys):
    """With val_fraction 0 only training curves exist: they carry the variants' names in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    legends = []
    real_close = plt.close

    def close(fig):
        legends.extend(t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts())
        real_close(fig)

    monkeypatch.setattr(plt, "close", close)
    assert main(["run", str(tiny_study), "--out", str(tmp_path / "o"), "--set", "data.val_fraction=0"]) == 0
    assert {"plain", "regular"} <= set(legends)
