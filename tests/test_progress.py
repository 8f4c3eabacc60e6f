"""Progress bars in a log file are a few lines, not a redraw per step."""

from __future__ import annotations

import io

from chexfusion import progress


def test_a_bar_into_a_file_writes_whole_lines_and_few_of_them(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr(progress, "LOG_INTERVAL", 3600.0)
    for _ in progress.tqdm(range(5000), desc="stage1 epoch 1/6", file=log):
        pass
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert 1 <= len(lines) <= 3  # the start and the end, not one per step
    assert "5000/5000" in lines[-1] and lines[-1].startswith("stage1 epoch 1/6")


def test_a_terminal_keeps_the_live_bar():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out = Terminal()
    for _ in progress.tqdm(range(3), file=out, mininterval=0):
        pass
    assert "\r" in out.getvalue()


def test_disable_none_keeps_a_file_silent():
    log = io.StringIO()
    for _ in progress.tqdm(range(10), file=log, disable=None):
        pass
    assert log.getvalue() == ""


def test_a_loss_shown_after_every_step_does_not_add_a_line_per_step(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr(progress, "LOG_INTERVAL", 3600.0)
    bar = progress.tqdm(total=500, desc="stage1 epoch 1/6", file=log)
    for step in range(500):
        bar.update(1)
        bar.set_postfix(loss=f"{1 / (step + 1):.4f}")
    bar.close()
    assert 1 <= len(log.getvalue().splitlines()) <= 3
