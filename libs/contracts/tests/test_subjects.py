import pytest

from jobwire.contracts import RunEvent, Stream, Subjects, token


def test_subjects_under_the_default_namespace() -> None:
    subjects = Subjects()

    assert subjects.job_due("start-workflow") == "jobwire.jobs.due.start-workflow"
    assert subjects.workflow_start("order_approval") == "jobwire.workflows.start.order_approval"
    assert subjects.run_event("r-1", RunEvent.FINISHED) == "jobwire.runs.r-1.finished"
    assert subjects.run_event("r-1", RunEvent.CANCEL_REQUESTED) == "jobwire.runs.r-1.cancel"
    assert subjects.dlq("archiver") == "jobwire.dlq.archiver"


def test_wildcards_for_consumers() -> None:
    subjects = Subjects("test-7")

    assert subjects.all_job_due() == "test-7.jobs.due.*"
    assert subjects.all_workflow_start() == "test-7.workflows.start.*"
    assert subjects.all_run_events() == "test-7.runs.*.*"
    assert subjects.all_run_events(RunEvent.PROGRESS) == "test-7.runs.*.progress"
    assert subjects.all_dlq() == "test-7.dlq.*"


def test_stream_names_carry_the_namespace() -> None:
    assert Subjects().stream_name(Stream.JOBS) == "JOBWIRE_JOBS"
    assert Subjects("test-7").stream_name(Stream.RUNS) == "TEST_7_RUNS"


def test_each_stream_covers_its_subjects() -> None:
    subjects = Subjects()

    assert subjects.stream_subjects(Stream.JOBS) == ["jobwire.jobs.>"]
    assert subjects.stream_subjects(Stream.WORKFLOWS) == ["jobwire.workflows.>"]
    assert subjects.stream_subjects(Stream.RUNS) == ["jobwire.runs.>"]
    assert subjects.stream_subjects(Stream.DLQ) == ["jobwire.dlq.>"]


@pytest.mark.parametrize("workflow", ["a.b", "*", ">", "", "with space", "tab\t"])
def test_workflow_that_is_not_one_token_is_refused_by_name(workflow: str) -> None:
    with pytest.raises(ValueError, match="workflow name") as excinfo:
        Subjects().workflow_start(workflow)

    assert repr(workflow) in str(excinfo.value)


def test_every_token_position_is_checked() -> None:
    subjects = Subjects()

    with pytest.raises(ValueError, match="job type"):
        subjects.job_due("jobs.>")
    with pytest.raises(ValueError, match="run id"):
        subjects.run_event("a.b", RunEvent.STARTED)
    with pytest.raises(ValueError, match="dead-letter source"):
        subjects.dlq("*")
    with pytest.raises(ValueError, match="namespace"):
        Subjects("job.wire")


def test_token_returns_a_valid_token_unchanged() -> None:
    assert token("Run_42-b", "run id") == "Run_42-b"


def test_validate_params_subject_is_outside_every_stream() -> None:
    subjects = Subjects("test-7")

    subject = subjects.validate_params("search-full-load")

    assert subject == "test-7.validate.search-full-load"
    # A stream capturing it would answer the request with a PubAck, not the owner.
    prefixes = [s.removesuffix(">") for stream in Stream for s in subjects.stream_subjects(stream)]
    assert not any(subject.startswith(prefix) for prefix in prefixes)
    with pytest.raises(ValueError, match="job type"):
        subjects.validate_params("search.*")
