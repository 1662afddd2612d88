"""Two live runs on one input, each with its own --out, would send every pair twice: the
second is refused (exit 74) unless told --allow-same-input; other inputs run side by side."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import launch
import pytest
from conftest import cli_env, new_uuid, run_cli, write_csv
from helpers import Serve
from truth import mixed_file, spawn_cli, wait_until

from bulk_unenroll import ReadOptions, ResultsFileError
from bulk_unenroll.sandbox import Sandbox
from bulk_unenroll.send.claims import DIR_ENV, InputClaim

SLOW = "10/s"  # the first run's pace: it is still going while the others start and end


def run_args(src: Path, out: Path, rate: str = "unlimited") -> list[str]:
    return ["run", str(src), "--out", str(out), "--rate", rate, "--concurrency", "4", "--yes"]


def stop(proc: launch.Process) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


@pytest.mark.slow
def test_a_second_run_on_the_same_input_is_refused_however_it_is_named(
    tmp_path: Path, serve: Serve
) -> None:
    mixed = mixed_file(tmp_path / "in.csv", 600, seed=21)
    api = mixed.sandbox()
    claims = tmp_path / "claims"
    env = cli_env(serve(api).base_url, **{DIR_ENV: str(claims)})
    (tmp_path / "link.csv").symlink_to(mixed.path)
    shutil.copyfile(mixed.path, tmp_path / "copy.csv")
    first_out = tmp_path / "first.csv"
    first = spawn_cli(run_args(mixed.path, first_out, SLOW), env, tmp_path / "logs")
    try:
        wait_until(lambda: api.state.calls >= 5, first)

        for name in ("in.csv", "link.csv", "copy.csv"):
            out = tmp_path / f"second-{name}"
            second = run_cli(run_args(tmp_path / name, out), env, timeout=60)

            assert second.returncode == 74, (name, second.stdout + second.stderr)
            assert "another run is using" in second.stderr
            assert f"pid {first.pid} on host" in second.stderr
            assert str(first_out.resolve()) in second.stderr
            assert "--allow-same-input" in second.stderr
            assert not out.exists(), "a refused run creates no results file"
        assert first.poll() is None, "the first run goes on undisturbed"
        assert max(api.state.deletes.values()) == 1, "no pair was sent twice"
    finally:
        stop(first)

    # The kernel dropped the killed run's claim: the input is free again.
    again = run_cli(run_args(mixed.path, tmp_path / "again.csv"), env)
    assert again.returncode == 1, again.stdout + again.stderr
    assert not list(claims.iterdir()), "a finished run leaves no claim behind"


def test_one_contacts_file_for_two_campaigns_runs_side_by_side(
    tmp_path: Path, serve: Serve
) -> None:
    contacts = [new_uuid(i + 1) for i in range(300)]
    src = write_csv(tmp_path / "contacts.csv", [(c,) for c in contacts], header=("contact_id",))
    enrolled = {(campaign, c) for campaign in ("cmp_a", "cmp_b") for c in contacts}
    api = Sandbox(enrolled)
    env = cli_env(serve(api).base_url)
    first = spawn_cli(
        [*run_args(src, tmp_path / "a.csv", SLOW), "--campaign", "cmp_a"], env, tmp_path / "logs"
    )
    try:
        wait_until(lambda: api.state.calls >= 5, first)

        other = run_cli([*run_args(src, tmp_path / "b.csv"), "--campaign", "cmp_b"], env)

        assert other.returncode == 0, other.stdout + other.stderr
        assert "another run" not in other.stderr
        assert not {("cmp_b", c) for c in contacts} & api.state.enrolled

        # The same input and campaign again, on purpose: it goes on, with a warning.
        forced = run_cli(
            [*run_args(src, tmp_path / "forced.csv"), "--campaign", "cmp_a", "--allow-same-input"],
            env,
        )

        assert forced.returncode == 0, forced.stdout + forced.stderr
        assert "warning: another run is using" in forced.stderr
        assert f"pid {first.pid} on host" in forced.stderr
    finally:
        stop(first)


def test_claims_in_process_and_their_release(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = write_csv(tmp_path / "in.csv", [("cmp_a", new_uuid(1))])
    claims = tmp_path / "claims"
    monkeypatch.setenv(DIR_ENV, str(claims))
    out, read = tmp_path / "r.csv", ReadOptions()
    first = InputClaim(src, out, read, shared=False)
    try:
        with pytest.raises(ResultsFileError, match="another run is using"):
            InputClaim(src, tmp_path / "other.csv", read, shared=False)
        InputClaim(src, out, ReadOptions(campaign="cmp_b"), shared=False).release()
        shared = InputClaim(src, tmp_path / "other.csv", read, shared=True)
        assert f"pid {os.getpid()} on host" in shared.others and str(out.resolve()) in shared.others
        shared.release()
    finally:
        first.release()
    assert not list(claims.iterdir())
    InputClaim(src, out, read, shared=False).release()  # free again


def test_a_claims_folder_others_can_write_is_not_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = write_csv(tmp_path / "in.csv", [("cmp_a", new_uuid(1))])
    shared_folder = tmp_path / "shared"
    shared_folder.mkdir()
    shared_folder.chmod(0o777)
    monkeypatch.setenv(DIR_ENV, str(shared_folder))

    claim = InputClaim(src, tmp_path / "r.csv", ReadOptions(), shared=False)

    assert DIR_ENV in claim.unchecked
    assert not list(shared_folder.iterdir()), "nothing is written where others could read it"
