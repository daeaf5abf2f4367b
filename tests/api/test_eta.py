"""The `eta` arithmetic (services/api/tasks/eta.py) and its measured inputs (shared/runtime/servicetime.py): pure."""

from __future__ import annotations

import pytest

from services.api.tasks.eta import Position, StageRate, remaining_s, stage_rates, upscale_s
from services.api.tasks.etareads import Depth
from shared.messages import Category, Classification, Stage, UpscaleOptions
from shared.runtime.servicetime import Ewma, ModelRates, ServiceTime, model_key

ONE_EACH = {stage: StageRate(service_s=1.0, concurrency=1) for stage in Stage}


def test_the_mean_follows_the_newest_tasks_and_starts_at_the_first() -> None:
    mean = Ewma(alpha=0.5)
    assert mean.mean is None
    mean.observe(4.0)
    assert mean.mean == 4.0
    mean.observe(2.0)
    assert mean.mean == 3.0
    assert mean.count == 2


def test_a_stage_record_names_its_stage_and_its_time_once_measured() -> None:
    timing = ServiceTime("fetch")
    assert timing.record() == {"stage": "fetch"}
    timing.observe(0.25)
    assert timing.record() == {"stage": "fetch", "service_time_s": 0.25}


def test_the_upscaler_records_megapixels_per_second_per_model_by_name() -> None:
    rates = ModelRates()
    assert rates.record() == {}
    rates.observe("lanczos (fallback: RealESRGAN_x4plus weights not installed)", 2_000_000, 0.5)
    rates.observe("RealESRGAN_x4plus", 1_000_000, 0)  # no time measured: nothing learnt
    assert rates.record() == {"mp_per_s": {"lanczos": 4.0}}
    assert model_key("realesr-animevideov3 (RealESRGAN_x4plus not installed)") == "realesr-animevideov3"


def test_rates_come_from_the_live_workers_of_each_stage() -> None:
    records = [
        {"service": "fetcher", "stage": "fetch", "concurrency": 2, "service_time_s": 0.5, "in_flight": ["a"]},
        {"service": "fetcher", "stage": "fetch", "concurrency": 2, "in_flight": ["b", "c"]},  # just started
        {"service": "upscaler", "stage": "upscale", "concurrency": 1, "service_time_s": 2.0},
        {"service": "classifier", "stage": "classify", "concurrency": 4},  # nothing measured: no rate
        {"service": "api", "worker_id": "api-1"},  # not a stage
    ]
    rates = stage_rates(records)
    assert set(rates) == {Stage.FETCH, Stage.UPSCALE}
    fetch = rates[Stage.FETCH]
    assert (fetch.concurrency, fetch.held, fetch.per_s, fetch.service_s) == (4, 3, 8.0, 0.5)
    assert rates[Stage.UPSCALE].per_s == 0.5


def test_a_waiting_task_waits_for_the_messages_before_it_then_passes_every_stage() -> None:
    # 3 ahead in the fetch queue, one slot per stage of 1 s each: it starts fetching at 3 s, done at 4 + 3.
    assert remaining_s(Position(Stage.FETCH, ahead=3), ONE_EACH) == 7.0
    # Nothing ahead and free slots: only its own time in each stage.
    assert remaining_s(Position(Stage.FETCH), ONE_EACH) == 4.0


def test_the_slowest_stage_paces_the_tasks_before_it() -> None:
    slow = {**ONE_EACH, Stage.UPSCALE: StageRate(service_s=10.0, concurrency=2)}  # 0.2 tasks/s
    # 9 before it in fetch: it is fetched at 10 s, but the upscaler starts it only once the 9 have started:
    # (9 - 2 + 1) / 0.2 = 40 s, then 10 s of its own and 1 s to upload.
    assert remaining_s(Position(Stage.FETCH, ahead=9), slow) == 51.0


def test_tasks_already_further_along_count_in_their_stage() -> None:
    rates = {**ONE_EACH, Stage.UPSCALE: StageRate(service_s=1.0, concurrency=1, held=1)}
    position = Position(Stage.CLASSIFY, waiting={Stage.UPSCALE: 2})
    # Upscale must start 1 held + 2 queued first: its slot is free at 3 s; done at 4 s; uploaded at 5 s.
    assert remaining_s(position, rates) == 5.0


def test_a_running_task_has_its_mean_time_left_less_what_it_ran() -> None:
    assert remaining_s(Position(Stage.UPSCALE, running_s=0.25), ONE_EACH) == 1.75
    assert remaining_s(Position(Stage.UPLOAD, running_s=5.0), ONE_EACH) == 0.0  # over its mean: any moment


def test_a_retried_message_waits_out_its_delay() -> None:
    assert remaining_s(Position(Stage.FETCH, ready_in_s=5.0), ONE_EACH) == 9.0


def test_no_estimate_while_a_stage_ahead_is_unmeasured() -> None:
    rates = {stage: rate for stage, rate in ONE_EACH.items() if stage != Stage.UPLOAD}
    assert remaining_s(Position(Stage.FETCH), rates) is None
    assert remaining_s(Position(Stage.UPLOAD), {}) is None


def test_its_own_upscale_follows_its_input_size_and_model() -> None:
    rate = StageRate(service_s=3.0, concurrency=1, mp_per_s={"RealESRGAN_x4plus": 0.5, "lanczos": 10.0})
    photo = Classification(category=Category.PHOTO, width=1000, height=1000, aspect_ratio=1.0)
    assert upscale_s(rate, photo, UpscaleOptions()) == pytest.approx(2.0)  # routed: RealESRGAN_x4plus
    assert upscale_s(rate, photo, UpscaleOptions(model="lanczos")) == pytest.approx(0.1)
    # A model nobody measured yet (what runs instead is a stand-in): the measured models' mean.
    assert upscale_s(rate, photo, UpscaleOptions(model="realesr-general-x4v3")) == pytest.approx(1 / 5.25)
    assert upscale_s(rate, None, UpscaleOptions()) == 3.0  # size unknown before classification: the mean
    # Used in place of the stage's mean for the task's own pass.
    rates = {**ONE_EACH, Stage.UPSCALE: rate}
    assert remaining_s(Position(Stage.UPSCALE), rates, own_upscale_s=2.0) == 3.0


def test_the_messages_before_a_task_are_read_off_its_stream_sequence() -> None:
    # 10 undelivered messages of the stage between sequence 100 (the last delivered) and 200 (the newest).
    depth = Depth(pending=10, delivered_seq=100, last_seq=200)
    assert depth.ahead_of(101) == 0  # next in line
    assert depth.ahead_of(200) == 9  # the newest: every other one is before it
    assert depth.ahead_of(150) == round(9 * 49 / 99)  # spread evenly over the sequences in between
    assert depth.ahead_of(90) == 0  # delivered already (a retry waiting out its delay)
    assert depth.ahead_of(250) == 10  # stored after the count was read: every message counted is before it
    assert Depth(pending=0, delivered_seq=5).ahead_of(9) == 0
